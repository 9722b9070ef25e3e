"""PromptCBLUE-format evaluation: loading (dataset), official scoring (scoring), the run over variants and the accuracy guard."""
