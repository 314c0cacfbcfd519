"""Reproductions of published tables: `invbench reproduce NAME`.

catalogue  what each reproduction is (sweep, selections, published numbers, deviations)
tidy       the small committed files a reproduction's tables are built from
published  the paper's numbers side by side with ours
outputs    results/NAME/: leaderboards, comparison, plots, README
"""
