"""The site portal: a web application over the store for site data managers (check, send,
correct, withdraw, see their batches), scripts with a site token (the API) and coordinators
(every site's status, the reports, the audit log). ``lacrima portal serve`` runs it.

Layout (FastAPI's "Bigger Applications"): ``app`` builds the application and holds what every
route shares (who is asking, the one guard, CSRF, streamed uploads); ``api`` is the token API,
``pages`` the site and coordinator pages; ``cli`` the ``lacrima portal`` commands.
"""
