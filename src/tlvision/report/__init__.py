"""What a run learned, as pages: RUN/report.html (page; headline, curves, top_losses, plots,
interpretation) and `tlvision compare`.

Imports training and below; not advisor (it reads advice.json) or serve.
"""
