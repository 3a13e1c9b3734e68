"""The dashboard's pages, one module each, and the helpers they share."""
