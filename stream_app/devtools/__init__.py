"""Development tools: the synthetic EHR stream generator and the end-to-end demo.

They use the product (engine, config, topics, the worker as a subprocess); no product
module imports them, so a deployment could leave this package out.
"""
