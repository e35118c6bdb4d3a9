"""The study application behind ``rarekit demo``: it trains and compares imbalance methods on real data
and writes a report. It is built on the library and the library never imports it.

- :mod:`.demo`: the classification study (digits-LT, chatterbot topics, or ``--data``);
- :mod:`.lm`: the language-model study (``rarekit demo --lm``);
- :mod:`.datasets`, :mod:`.text`: data loading and text features; :mod:`.report`: the report.
"""
