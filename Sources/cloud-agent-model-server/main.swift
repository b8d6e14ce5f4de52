import ArgumentParser
import CloudAgentModelServer
import Foundation
import Hummingbird
import Logging

/// An offline stand-in for a model provider that real agent CLIs talk to (docs/model-server.md).
struct ModelServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloud-agent-model-server",
        abstract: "A scripted model server speaking the Anthropic Messages API and the OpenAI Responses API.",
        discussion: "Prints `listening on http://HOST:PORT` as the first line of stdout once it accepts connections."
    )

    @Option(help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The port to listen on (0 picks a free one).")
    var port = 0

    @Option(help: "A JSON script of model turns (docs/model-server.md). Without it every request gets the default text.")
    var script: String?

    @Option(help: "Append every request, as one JSON line, to this file.")
    var record: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "warning"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let loaded: ModelScript
        do {
            loaded = try script.map { try ModelScript(contentsOf: URL(fileURLWithPath: $0)) } ?? ModelScript()
        } catch {
            throw ValidationError("\(error)")
        }
        let model: ScriptedModel
        do {
            model = try ScriptedModel(script: loaded, recordURL: record.map { URL(fileURLWithPath: $0) })
        } catch {
            throw ValidationError("cannot open the record file \(record ?? "")")
        }
        let host = host
        let app = buildModelServerApplication(
            model: model, configuration: .init(host: host, port: port), logger: Logger(label: "cloud-agent-model-server")
        ) { port in
            let shown = host.contains(":") ? "[\(host)]" : host
            // Written at once, unbuffered: the first line is what a parent process waits for.
            FileHandle.standardOutput.write(Data("listening on http://\(shown):\(port)\n".utf8))
        }
        try await app.runService()
    }
}

do {
    try await ModelServerCommand.parse().run()
} catch {
    ModelServerCommand.exit(withError: error)
}
