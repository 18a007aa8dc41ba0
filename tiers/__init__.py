"""KV block stores, the tier hierarchy with watermarks, and its policies.

A library: it knows nothing of dashboards or sockets to them; it reports what happens through the
event sink it is given (see ``events``).
"""
