"""A finished run for a person: the offline HTML report (html.py), tables to export (export.py), and a headless
browser to check that the report renders (browser.py)."""
