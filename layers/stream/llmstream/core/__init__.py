"""What every function shares: the wire protocol, the SNS envelope, settings, AWS clients,
DynamoDB helpers and logging."""
