"""The app's service, below the page and free of Gradio: settings and input limits (``settings``), the
shared models, score cache and weights' status (``models``), request folders (``folders``), ZeroGPU's
time budget (``gpu``) and scores as the page shows them (``results``)."""
