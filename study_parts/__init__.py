"""
The study's parts (study.py runs them; nothing on the textbook's reading path imports them):

    plan.py           every run of the study, its grid and phase
    summaries.py      reading run summaries: scores by LR and seed, the chosen and the fastest LR
    claims.py         the claim rows from run summaries (LRs on validation, verdicts on test)
    geometry_rows.py  the trajectory study's rows, from geometry.json
    stats.py          the statistics behind the rows: paired intervals, verdicts, Holm, McNemar
    report.py         claims.json, the figures and RESULTS.md's block, from results/ alone
"""
