"""What a run reports for people: evaluation reports and figures, explanations, fonts for Chinese labels.

    reports.py   per-class / per-label reports, confusion matrix, training curves
    explain.py   integrated-gradients token attributions, bad cases, the HTML/JSON writer
    fonts.py     a CJK font for matplotlib where the system has none
    card.py      the model card renderer: Hugging Face YAML front matter + the card's sections
"""
