"""Who may do what: tokens, grants, claims, their verification, and the permission rules.

`tokens` mints and verifies participant and admin tokens, `admin` holds the admin grants
and which request each covers, `rules` the one "may this participant do X" rule set the edge
and the statekeeper's fold both call. Imports only `schemas`; never a service or the SDK.
"""
