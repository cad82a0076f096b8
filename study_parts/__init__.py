"""
The study's parts (study.py runs them; nothing on the textbook's reading path imports them):

    plan.py           every run of the study, its grid and phase
    gpu.py            the plan at GPU scale, printed with its GPU-hours
    summaries.py      reading run summaries: scores by LR and seed, the chosen and the fastest LR
    claims.py         the claim rows from run summaries (LRs on validation, verdicts on test)
    capacity.py       the rows about capacity: the knee in stored bits, the ladder, the dial
    geometry_rows.py  the trajectory study's rows, from geometry.json
    rows.py           what the row builders share: sources, formats, power, "not measured"
    optima.py         an LR optimum as a parabola's vertex in log-LR, ratios, slopes against rank
    stats.py          the statistics behind the rows: paired intervals, verdicts, Holm, McNemar
    figures.py        the study's figures
    report.py         claims.json, the figures and RESULTS.md's block, from results/ alone
"""
