"""Live-server helpers: launching SGLang servers, replaying request traces against them."""
