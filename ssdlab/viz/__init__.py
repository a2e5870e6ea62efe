"""Pictures of detections, histograms and widgets for the notebooks."""
