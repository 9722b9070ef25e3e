"""Every quality metric in one place: workflow checks (diagnosis named, discharge sections),
ROUGE-L, agreement with the FP32 reference, grounding of findings, and usage rates."""
