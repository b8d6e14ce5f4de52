import ArgumentParser
import CloudAgentCore
import Foundation
import NIOHTTP1

/// `cloud-agent answer SESSION REQUEST allow|deny|--text TEXT`: answers an agent's input request.
struct AnswerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "answer",
        abstract: "Answer an agent's permission request (allow or deny) or question (--text).",
        discussion: """
            `cloud-agent sessions show SESSION` lists what the agent waits for. A permission takes \
            allow or deny, optionally --always (the same tool is answered so from now on in this \
            session) or --option ID (one of the agent's own options). A question takes --text, or \
            --json for a form's fields ({"field": "value"}), or deny to decline it. \(ExitStatus.summary)
            """
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Argument(help: "The request id (req_…).") var request: String
    @Argument(help: "allow or deny (a permission; deny also declines a question).") var decision: String?
    @Option(help: "A question's answer.") var text: String?
    @Option(name: .customLong("fields"), help: ArgumentHelp("A question's answer as a JSON object of fields.", valueName: "JSON")) var fields: String?
    @Option(name: .customLong("option"), help: "One of the agent's options (its id), agreeing with the decision.") var option: String?
    @Flag(help: "Answer the same tool's later requests of this session the same way.") var always = false

    func validate() throws {
        let given = [decision != nil, text != nil, fields != nil].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give one of: allow, deny, --text TEXT, --fields JSON") }
        if let decision, decision != "allow", decision != "deny" { throw ValidationError("the decision must be allow or deny") }
        if decision == nil, always || option != nil { throw ValidationError("--always and --option go with allow or deny") }
    }

    func body() throws -> JSONValue {
        if let text { return ["answer": .string(text)] }
        if let fields {
            guard case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(fields.utf8)) else {
                throw ValidationError("--fields must be a JSON object")
            }
            return ["answer": .object(object)]
        }
        var body: [String: JSONValue] = ["decision": .string(decision ?? "deny")]
        if let option { body["optionId"] = .string(option) }
        if always { body["always"] = true }
        return .object(body)
    }

    func run() async throws {
        let answer = try await client.client().send(
            .POST, "/v1/sessions/\(APIClient.escape(id))/input-requests/\(APIClient.escape(request))", body: try body())
        let console = Console.shared
        if client.json {
            console.line(answer.line)
            return
        }
        let resolution = answer.json["resolution"] ?? .null
        var line = "\(request): \(resolution["decision"]?.stringValue ?? "answered")"
        if let option = resolution["optionId"]?.stringValue { line += " (option \(option))" }
        console.line(line + console.paint(" · the agent goes on", .dim))
    }
}
