"""Hosting and routing: partitions (the single writers), their hosts and the router."""
