"""The radiologist review pages of ``medimg serve`` (``/review``): sessions, cases, reviews and their feedback.

:mod:`~medimg.review.sessions` (server-side sessions), :mod:`~medimg.review.login_limit` (failed logins),
:mod:`~medimg.review.cases` (the scored DICOM-node predictions to review), :mod:`~medimg.review.reviews`
(the append-only review log), :mod:`~medimg.review.feedback` (reviewed images into the training inbox),
:mod:`~medimg.review.overlay` (Grad-CAM overlays), :mod:`~medimg.review.worklist` (filters) and
:mod:`~medimg.review.web` (the FastAPI sub-application mounted under ``/review``).
"""
