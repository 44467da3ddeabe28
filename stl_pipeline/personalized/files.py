"""The H&M release's file names, shared by the generator, the settings and the resource."""

TRANSACTIONS_FILE, ARTICLES_FILE, CUSTOMERS_FILE = "transactions_train.csv", "articles.csv", "customers.csv"
HM_FILES = (TRANSACTIONS_FILE, ARTICLES_FILE, CUSTOMERS_FILE)  # the order of HM_*_PATH
TRUTH_DIR = "truth"  # beside generated files: the latent parameters only the oracle reads
