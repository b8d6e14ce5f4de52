import CloudAgentRuntime
import Foundation

exit(await RuntimeCommand.main(arguments: CommandLine.arguments))
