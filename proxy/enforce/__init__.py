"""Policy enforcement: the router's decision per statement, and the live schema and catalogs it judges against."""
