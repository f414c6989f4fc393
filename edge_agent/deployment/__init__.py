"""Deploying a model version pushed by central: `transfer` fetches its artifact in chunks,
`checks` verifies the command, the artifact and the model, `ledger` remembers the commands
carried out, and `deployer` runs the steps, the shadow run and the probation."""
