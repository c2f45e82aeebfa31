"""The browser chat page: plain HTML, CSS and ES modules, served as they are by
server/web.py (no build step, no CDN: it must work on a robot with no internet)."""
