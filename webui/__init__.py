"""tunelab's web studio (Gradio). Shipped in the wheel as tunelab.webui."""
