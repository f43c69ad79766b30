"""The pure domain: the decision rules and their state, safety, honest text, webhook
normalisation, send-API bodies and the offline writer. No Kafka, Faust, Redis or network."""
