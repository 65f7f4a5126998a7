"""The last stage of the DAG: finished runs aggregated into the thesis figures and tables.

The summary over folds and seeds (``aggregate``), tables (``tables``), figures (``figures``),
the paired tests (``stats``), the DVC views (``dvc_views``), the comparison of two environments'
results (``compare``), and what the report rule writes (``build``).

Imports: ``core`` only: the report reads run folders, not the code that wrote them.
"""
