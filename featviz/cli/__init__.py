"""The click commands: parse, call the library, print. No computation lives here.

The entry point is ``featviz.cli.main:main``.
"""
