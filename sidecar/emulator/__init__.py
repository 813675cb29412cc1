"""A local AWS Marketplace Metering Service emulator (see DESIGN.md, "The emulator").

Layers, from pure to I/O:
  errors   the AWS error types and their HTTP statuses
  model    botocore's own service model and validator
  rules    the rules the model cannot express (pure functions)
  signer   the PS256 key pair that signs RegisterUsage tokens
  sigv4    SigV4 request authentication
  faults   fault injection and per-account rate limits
  state    products, entitlement, records and idempotency: the service's behaviour
  server   the HTTP front (wire protocol and the /_emulator admin API)
"""
