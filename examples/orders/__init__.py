"""The order system: event sourcing, CQRS, outbox, inbox and projections, end to end.

python -m examples.orders                 # the demo, on memory:// + SQLite in a temp dir
python -m examples.orders all             # every service in one process, until Ctrl-C
python -m examples.orders command|relay|projection|notification|query
                                          # one service per process (RabbitMQ/Kafka +
                                          # PostgreSQL: EVENTBUS_URL, EVENTBUS_STORE_URL)
"""
