"""Differential diagnosis (鉴别诊断): the record logic (``record``) and the widget app (``app``)."""
