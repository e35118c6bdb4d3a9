"""MkDocs hook: a link of an included file (the README) to a repository file that the site renders as a page
of its own points to that page (``benchmarks/RESULTS.md`` is benchmarks.md here): outside docs/ the link would
be broken, and the strict build fails on a broken link."""
import re

PAGES = {"benchmarks/RESULTS.md": "benchmarks.md", "README.md": "index.md"}
LINK = re.compile(r"\]\((?:\.\./)+(?P<path>" + "|".join(map(re.escape, PAGES)) + r")(?P<anchor>#[^)]*)?\)")


def on_page_markdown(markdown: str, **kwargs) -> str:
    return LINK.sub(lambda match: f"]({PAGES[match['path']]}{match['anchor'] or ''})", markdown)
