"""Report rendering: reads run folders, search ``metrics.json`` and attack CSVs (``collect``, ``raw``) and
renders Tables 1 and 2 beside the paper's numbers, CMC/ROC plots, the defence leaderboard and an offline
HTML page (``build``, ``tables``, ``plots``, ``leaderboard``, ``html``). Nothing here recomputes a metric."""
