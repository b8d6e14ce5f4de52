import CloudAgentCLI

await CloudAgentCommand.runFromCommandLine()
