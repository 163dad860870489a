"""What was logged, analysed: the study from the store, figures, report, the analysis job."""
