"""Presentation: the leaderboard, seed grouping, summaries and the HTML report, read from run
records (docs/architecture.md)."""
