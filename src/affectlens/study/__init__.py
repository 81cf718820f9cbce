"""The study: both papers' protocols as resumable stages, and a report whose verdicts follow from the numbers."""
