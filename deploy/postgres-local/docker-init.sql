-- docker-compose only: run once by the postgres image on an empty data volume. The queue
-- service's login role; `chargecap queue migrate` (service queue-migrate) grants it what
-- it may do. The password is a development placeholder, as is the whole compose stack.
CREATE ROLE chargecap_queue LOGIN PASSWORD 'chargecap-queue-dev';
