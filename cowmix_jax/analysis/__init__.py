"""The paper's analyses as tools: patch distances (Figure 1, appendix B), the toy 2D
experiment (Figure 2, appendix A) and the cow-mask gallery (Figure 4)."""
