"""Load balancer providers behind one small interface."""
