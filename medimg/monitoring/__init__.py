"""Live monitoring of ``medimg serve``: the prediction log in windows against the champion's references.

:mod:`~medimg.monitoring.report` (the typed report, read and written as JSON), :mod:`~medimg.monitoring.windows`
(pure: windows, drift, refusal rates, realised sensitivity and specificity with Wilson intervals, events),
:mod:`~medimg.monitoring.reference` (I/O: each model version's reference scores and training intensities),
:mod:`~medimg.monitoring.plots` (one PNG per window) and :mod:`~medimg.monitoring.run` (one monitoring run,
what ``medimg monitor`` and ``flows/monitor.py`` call).
"""
