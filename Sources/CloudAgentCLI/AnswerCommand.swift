import ArgumentParser
import CloudAgentCore
import Foundation
import NIOHTTP1

/// `cloud-agent answer SESSION REQUEST allow|deny|--text TEXT`: answers an agent's input request.
struct AnswerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "answer",
        abstract: "Answer an agent's permission request (allow or deny), question (--text) or budget request (allow or deny).",
        discussion: """
            `cloud-agent sessions show SESSION` lists what the agent waits for. A permission takes \
            allow or deny, optionally --always (the same tool is answered so from now on in this \
            session) or --option ID (one of the agent's own options). A question takes --text, or \
            --json for a form's fields ({"field": "value"}), or deny to decline it. A budget request \
            (the session's budget is reached; the agent waits) takes allow (or continue: the budget \
            is raised by its own amount and the agent goes on) or deny (or stop: the execution is \
            interrupted, reason budget). \(ExitStatus.summary)
            """
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Argument(help: "The request id (req_…).") var request: String
    @Argument(help: "allow or deny (a permission or budget request; deny also declines a question); continue and stop say the same.")
    var decision: String?
    @Option(help: "A question's answer.") var text: String?
    @Option(name: .customLong("fields"), help: ArgumentHelp("A question's answer as a JSON object of fields.", valueName: "JSON")) var fields: String?
    @Option(name: .customLong("option"), help: "One of the agent's options (its id), agreeing with the decision.") var option: String?
    @Flag(help: "Answer the same tool's later requests of this session the same way.") var always = false

    func validate() throws {
        let given = [decision != nil, text != nil, fields != nil].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give one of: allow, deny, --text TEXT, --fields JSON") }
        if let decision, Self.decisions[decision] == nil {
            throw ValidationError("the decision must be allow or deny (or, the same, continue or stop), not \"\(decision)\"")
        }
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
        var body: [String: JSONValue] = ["decision": .string(decision.flatMap { Self.decisions[$0] } ?? "deny")]
        if let option { body["optionId"] = .string(option) }
        if always { body["always"] = true }
        return .object(body)
    }

    /// The decisions the command takes, and what each sends.
    static let decisions = ["allow": "allow", "deny": "deny", "continue": "allow", "stop": "deny"]

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
        let stopped = answer.json["kind"] == "budget" && resolution["decision"] == "deny"
        let next = stopped ? " · the execution is stopped (interrupted, reason budget)" : " · the agent goes on"
        console.line(line + console.paint(next, .dim))
    }
}
