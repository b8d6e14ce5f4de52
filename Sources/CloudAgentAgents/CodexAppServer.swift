import CloudAgentProtocol

/// Codex driven through `codex app-server` (JSON-RPC, one object per line on stdio). Codex's own
/// sandbox is off (`danger-full-access`: ours is the boundary; `read-only` in a read-only
/// execution). With approvals `ask` it asks before every command and every file change
/// (`approvalPolicy: untrusted`), with `auto` never; its `request_user_input` tool asks the user
/// questions either way.
///
/// One process per execution, like `codex exec`: the runtime writes `initialize`; this parser
/// answers each response with the next step (`initialized`, `thread/start` or `thread/resume`,
/// `turn/start`), turns notifications into normalized events, and the server's requests into
/// input requests; `turn/completed` ends the input, and Codex exits.
///
/// - `item/commandExecution/requestApproval` → a permission for tool `shell` with `{command,
///   cwd}`; `{"decision": accept | decline | cancel}`.
/// - `item/fileChange/requestApproval` → a permission for tool `apply_patch` with the changes
///   of the item it concerns; the same decisions.
/// - `item/tool/requestUserInput` → a question; `{"answers": {QUESTION_ID: {"answers": [..]}}}`,
///   no answers when declined.
/// - `mcpServer/elicitation/request`: with `_meta.codex_approval_kind: mcp_tool_call`, Codex
///   asking before it calls an MCP tool → a permission for `mcp__SERVER__TOOL`; else an MCP
///   server's form → a question, answered as ACP's `elicitation/create` is; a URL is declined.
/// - `serverRequest/resolved` → the request is withdrawn (also sent after an answer: ignored then).
public struct CodexAppServerParser: AgentOutputParser {
    public private(set) var conversationId: String?
    private var reported: AgentOutcome?
    private var lastError: String?
    private let prompt: String
    private var resumeThread: String?
    private let threadSettings: [String: JSONValue]
    /// The changes of each file-change item, by item id (its approval request names only the item).
    private var changes: [String: JSONValue] = [:]
    /// The turn's usage so far: the sum of each model response's (`tokenUsage.last`). The
    /// thread's `total` also counts earlier executions' turns.
    private var turnUsage = (input: Int64(0), cached: Int64(0), cacheWrite: Int64(0), output: Int64(0))

    static let initializeId = 1
    static let threadId = 2
    static let turnId = 3

    /// - Parameters:
    ///   - resume: the thread of an earlier execution of the session.
    ///   - asks: approvals `ask`.
    ///   - readOnly: a read-only execution: Codex's own read-only sandbox; with approvals `ask`
    ///     it asks only to go beyond it (which the runtime denies).
    public init(prompt: String, resume: String?, model: String?, asks: Bool, readOnly: Bool) {
        self.prompt = prompt
        self.resumeThread = resume
        let policy: JSONValue = !asks ? "never" : readOnly ? "on-request" : "untrusted"
        var settings: [String: JSONValue] = ["approvalPolicy": policy, "sandbox": readOnly ? "read-only" : "danger-full-access"]
        if let model { settings["model"] = .string(model) }
        threadSettings = settings
    }

    public var outcome: AgentOutcome? { reported ?? lastError.map { .failed($0) } }

    /// Whether `command` runs Codex (through its app server).
    public static func drives(_ command: ExecuteCommand) -> Bool {
        command.launch?.kind == AgentKind.codex.rawValue
    }

    /// The first line the runtime writes: `initialize`.
    public static var initializeLine: String {
        line([
            "id": .number(Double(initializeId)), "method": "initialize",
            "params": [
                "clientInfo": ["name": "cloud-agent", "title": "cloud-agent runtime", "version": .string("protocol \(RuntimeProtocol.version)")],
                "capabilities": [
                    "optOutNotificationMethods": [
                        "account/rateLimits/updated", "remoteControl/status/changed", "item/agentMessage/delta", "thread/status/changed",
                    ]
                ],
            ],
        ])
    }

    static func line(_ object: JSONValue) -> String { JSONText.encode(object) + "\n" }

    public mutating func parse(line: String) -> [AgentOutputItem] {
        guard let object = AgentEventData.object(line) else { return [.output] }
        let method = object["method"]?.stringValue
        switch (method, object["id"]) {
        case (nil, let id?):
            return response(id: id.intValue.map(Int.init), object, raw: line)
        case (let method?, let id?):
            return request(method, id: id, params: object["params"] ?? .null, raw: line)
        case (let method?, nil):
            return notification(method, params: object["params"] ?? .null, raw: line)
        default:
            return [.agent(AgentEventData.log(line, raw: line))]
        }
    }

    // MARK: The client's steps

    private mutating func response(id: Int?, _ object: [String: JSONValue], raw: String) -> [AgentOutputItem] {
        let error = object["error"].flatMap { $0 == .null ? nil : $0 }
        switch id {
        case Self.initializeId?:
            guard error == nil else { return fail("Codex refused initialize: \(message(of: error))", raw: raw) }
            return [.reply(Self.line(["method": "initialized"])), .reply(openThread())]
        case Self.threadId?:
            if let error {
                guard let thread = resumeThread else { return fail("Codex could not start a thread: \(message(of: error))", raw: raw) }
                // A thread Codex no longer knows: a new one, saying so.
                resumeThread = nil
                return [
                    .agent(AgentEventData.log("a new Codex thread: the earlier one (\(thread)) could not be resumed: \(message(of: error))", raw: raw)),
                    .reply(openThread()),
                ]
            }
            let thread = object["result"]?["thread"]?["id"]?.stringValue
            if let thread, !thread.isEmpty { conversationId = thread }
            let words = resumeThread == nil ? "started" : "resumed"
            return [
                .agent(AgentEventData.log("thread \(conversationId ?? "?") \(words)", raw: raw)),
                .reply(
                    Self.line([
                        "id": .number(Double(Self.turnId)), "method": "turn/start",
                        "params": ["threadId": .string(conversationId ?? ""), "input": [["type": "text", "text": .string(prompt), "text_elements": []]]],
                    ])),
            ]
        case Self.turnId?:
            guard error == nil else { return fail("Codex could not start the turn: \(message(of: error))", raw: raw) }
            return []
        default:
            return []
        }
    }

    private func openThread() -> String {
        var params = threadSettings
        if let thread = resumeThread {
            params["threadId"] = .string(thread)
            params["excludeTurns"] = true
        }
        return Self.line(["id": .number(Double(Self.threadId)), "method": resumeThread == nil ? "thread/start" : "thread/resume", "params": .object(params)])
    }

    private mutating func fail(_ message: String, raw: String) -> [AgentOutputItem] {
        reported = .failed(message)
        return [.agent(AgentEventData.error(message, raw: raw)), .endOfInput]
    }

    private func message(of error: JSONValue?) -> String {
        error?["message"]?.stringValue ?? error.map(JSONText.encode) ?? "no reason given"
    }

    /// A model API's error body as Codex passes it on (`{"error":{"message":…}}`): its message.
    static func modelMessage(_ text: String) -> String {
        guard text.hasPrefix("{"), let body = AgentEventData.object(text), let message = body["error"]?["message"]?.stringValue, !message.isEmpty else {
            return text
        }
        return message
    }

    // MARK: The server's requests

    private func request(_ method: String, id: JSONValue, params: JSONValue, raw: String) -> [AgentOutputItem] {
        let requestId = JSONText.encode(id)
        switch method {
        case "item/commandExecution/requestApproval":
            let command = params["commandActions"]?.arrayValue?.first?["command"]?.stringValue ?? params["command"]?.stringValue ?? "?"
            var input: [String: JSONValue] = ["command": .string(command)]
            if let cwd = params["cwd"]?.stringValue { input["cwd"] = .string(cwd) }
            var data: [String: JSONValue] = ["kind": "permission", "tool": "shell", "input": .object(input)]
            if let reason = params["reason"]?.stringValue, !reason.isEmpty { data["question"] = .string(reason) }
            return [.inputRequest(AgentInputRequest(data: data, reply: .codex(requestId: requestId, id: id, kind: .approval)))]
        case "item/fileChange/requestApproval":
            let item = params["itemId"]?.stringValue ?? ""
            let summary = (changes[item]?.arrayValue ?? []).map { change -> JSONValue in
                ["path": change["path"] ?? .null, "kind": change["kind"]?["type"] ?? .null, "diff": change["diff"] ?? .null]
            }
            var data: [String: JSONValue] = ["kind": "permission", "tool": "apply_patch", "input": ["changes": .array(summary)]]
            if let reason = params["reason"]?.stringValue, !reason.isEmpty { data["question"] = .string(reason) }
            return [.inputRequest(AgentInputRequest(data: data, reply: .codex(requestId: requestId, id: id, kind: .approval)))]
        case "item/tool/requestUserInput":
            let questions = params["questions"]?.arrayValue ?? []
            var data: [String: JSONValue] = [
                "kind": "question", "tool": "request_user_input",
                "question": .string(questions.compactMap { $0["question"]?.stringValue }.joined(separator: "\n")), "input": ["questions": .array(questions)],
            ]
            if questions.count == 1 {
                let labels = (questions[0]["options"]?.arrayValue ?? []).compactMap { $0["label"]?.stringValue }
                if !labels.isEmpty { data["choices"] = .array(labels.map { .string($0) }) }
            }
            return [.inputRequest(AgentInputRequest(data: data, reply: .codex(requestId: requestId, id: id, kind: .userInput(questions))))]
        case "mcpServer/elicitation/request" where params["_meta"]?["codex_approval_kind"]?.stringValue == "mcp_tool_call":
            // Codex asking before it calls an MCP server's tool (approvals ask): a permission for
            // `mcp__SERVER__TOOL`, as Claude Code names it, with the call's arguments.
            let server = params["serverName"]?.stringValue ?? "?"
            let tool = params["message"]?.stringValue.flatMap { $0.firstMatch(of: /tool "([^"]+)"/).map { String($0.output.1) } } ?? "?"
            var data: [String: JSONValue] = ["kind": "permission", "tool": .string("mcp__\(server)__\(tool)")]
            if let input = params["_meta"]?["tool_params"], input != .null { data["input"] = input }
            if let message = params["message"]?.stringValue { data["question"] = .string(message) }
            return [.inputRequest(AgentInputRequest(data: data, reply: .codex(requestId: requestId, id: id, kind: .toolCallApproval)))]
        case "mcpServer/elicitation/request" where params["requestedSchema"] != nil:
            // An MCP server's form, passed on by Codex: a question, as ACP's elicitation is.
            var data = ACPElicitation.inputRequest(params)
            data["tool"] = .string("mcp:" + (params["serverName"]?.stringValue ?? "?"))
            return [.inputRequest(AgentInputRequest(data: data, reply: .codex(requestId: requestId, id: id, kind: .elicitation(params))))]
        case "mcpServer/elicitation/request":
            // A URL to open elsewhere (an OAuth flow, say): not something to answer here.
            return [
                .agent(AgentEventData.log("an MCP server asked to open \(params["url"]?.stringValue ?? "a URL"): declined", raw: raw)),
                .reply(Self.line(["id": id, "result": ["action": "decline", "content": .null, "_meta": .null]])),
            ]
        default:
            return [
                .agent(AgentEventData.log("Codex request \(method) refused: not served here", raw: raw)),
                .reply(Self.line(["id": id, "error": ["code": -32601, "message": .string("cloud-agent does not serve \(method)")]])),
            ]
        }
    }

    /// The response that gives Codex the user's decision on request `id`.
    public static func responseLine(id: JSONValue, kind: AgentReply.CodexRequest, decision: String, answer: JSONValue?) -> String {
        let result: JSONValue
        switch kind {
        case .approval:
            result = ["decision": .string(decision == "allow" ? "accept" : decision == "cancelled" ? "cancel" : "decline")]
        case .userInput(let questions):
            result = ["answers": decision == "answer" ? .object(answers(to: questions, from: answer ?? .null)) : [:]]
        case .toolCallApproval:
            let action: JSONValue = decision == "allow" ? "accept" : decision == "cancelled" ? "cancel" : "decline"
            result = ["action": action, "content": decision == "allow" ? [:] : .null, "_meta": .null]
        case .elicitation(let params):
            var object = ACPElicitation.result(decision: decision, answer: answer, params: params).objectValue ?? [:]
            object["content"] = object["content"] ?? .null
            object["_meta"] = .null
            result = .object(object)
        }
        return line(["id": id, "result": result])
    }

    /// `{QUESTION_ID: {"answers": [..]}}`: a text answers every question; an object names them
    /// by id, header, text or position ("1", "2", …); a list is several answers.
    static func answers(to questions: [JSONValue], from answer: JSONValue) -> [String: JSONValue] {
        var result: [String: JSONValue] = [:]
        for (index, question) in questions.enumerated() {
            guard let id = question["id"]?.stringValue else { continue }
            let value = AgentEventData.answer(
                at: index, names: [id, question["header"]?.stringValue, question["question"]?.stringValue], in: answer)
            let texts: [String]
            switch value {
            case .string(let text)?: texts = [text]
            case .array(let items)?: texts = items.map { $0.stringValue ?? JSONText.encode($0) }
            case let other?: texts = [JSONText.encode(other)]
            case nil: continue
            }
            result[id] = ["answers": .array(texts.map { .string($0) })]
        }
        return result
    }

    // MARK: Notifications

    private mutating func notification(_ method: String, params: JSONValue, raw: String) -> [AgentOutputItem] {
        switch method {
        case "item/started", "item/completed":
            guard let item = params["item"]?.objectValue else { return [] }
            return self.item(item, completed: method == "item/completed", raw: raw).map { [.agent($0)] } ?? []
        case "serverRequest/resolved":
            guard let id = params["requestId"] else { return [] }
            return [.withdrawn(agentRequestId: JSONText.encode(id))]
        case "error":
            let message = Self.modelMessage(params["error"]?["message"]?.stringValue ?? "error")
            if params["willRetry"]?.boolValue == true { return [.agent(AgentEventData.log("retrying: \(message)", raw: raw))] }
            lastError = message
            return [.agent(AgentEventData.error(message, raw: raw))]
        case "turn/completed":
            let turn = params["turn"]
            switch turn?["status"]?.stringValue {
            case "completed":
                reported = .succeeded
                lastError = nil
                return [.agent(AgentEventData.log("turn completed", raw: raw)), .endOfInput]
            case "interrupted":
                reported = .failed("the turn was interrupted")
                return [.agent(AgentEventData.log("turn interrupted", raw: raw)), .endOfInput]
            default:
                let message = turn?["error"]?["message"]?.stringValue.map(Self.modelMessage) ?? lastError ?? "the turn failed"
                reported = .failed(message)
                return [.agent(AgentEventData.error(message, raw: raw)), .endOfInput]
            }
        case "turn/started":
            reported = nil
            lastError = nil
            return [.agent(AgentEventData.log("turn started", raw: raw))]
        case "thread/tokenUsage/updated":
            // `inputTokens` counts the cached ones too: they are reported apart. Codex reports no cost.
            guard let last = params["tokenUsage"]?["last"]?.objectValue else { return [] }
            turnUsage.input += AgentUsage.count(last["inputTokens"]) ?? 0
            turnUsage.cached += AgentUsage.count(last["cachedInputTokens"]) ?? 0
            turnUsage.cacheWrite += AgentUsage.count(last["cacheWriteInputTokens"]) ?? 0
            turnUsage.output += AgentUsage.count(last["outputTokens"]) ?? 0
            return [
                .usage(
                    AgentUsage.data(
                        input: turnUsage.input - turnUsage.cached - turnUsage.cacheWrite, output: turnUsage.output, cacheRead: turnUsage.cached,
                        cacheWrite: turnUsage.cacheWrite))
            ]
        default:
            // Status, diffs, warnings: not events of their own.
            return []
        }
    }

    private mutating func item(_ item: [String: JSONValue], completed: Bool, raw: String) -> [String: JSONValue]? {
        let id = item["id"]?.stringValue
        switch item["type"]?.stringValue {
        case "agentMessage":
            guard completed, let text = item["text"]?.stringValue, !text.isEmpty else { return nil }
            return AgentEventData.text(text, raw: raw)
        case "reasoning":
            let text = (item["summary"]?.arrayValue ?? []).compactMap(\.stringValue).joined(separator: "\n")
            guard completed, !text.isEmpty else { return nil }
            return AgentEventData.log("reasoning: \(AgentEventData.tail(text, limit: 500))", raw: raw)
        case "commandExecution":
            let command = item["commandActions"]?.arrayValue?.first?["command"]?.stringValue ?? item["command"]?.stringValue
            let status = item["status"]?.stringValue ?? "inProgress"
            let exitCode = item["exitCode"]?.intValue
            let normalized: String
            switch status {
            case "completed": normalized = exitCode.map { $0 == 0 } ?? true ? "completed" : "failed"
            case "failed", "declined": normalized = "failed"
            default: normalized = "running"
            }
            let output = status == "declined" ? "declined" : item["aggregatedOutput"]?.stringValue ?? ""
            return AgentEventData.tool(
                name: "shell", input: command, output: completed ? output : nil, status: completed ? normalized : "running",
                exitCode: completed ? exitCode : nil, id: id, raw: raw)
        case "fileChange":
            if let id, let changes = item["changes"] { self.changes[id] = changes }
            if completed, let id { changes[id] = nil }
            let paths = (item["changes"]?.arrayValue ?? []).map { "\($0["kind"]?["type"]?.stringValue ?? "change") \($0["path"]?.stringValue ?? "?")" }
            let status = item["status"]?.stringValue
            return AgentEventData.tool(
                name: "apply_patch", input: paths.joined(separator: ", "), output: completed && status == "declined" ? "declined" : nil,
                status: completed ? (status == "completed" ? "completed" : "failed") : "running", id: id, raw: raw)
        case "mcpToolCall":
            let name = [item["server"]?.stringValue, item["tool"]?.stringValue].compactMap { $0 }.joined(separator: ".")
            let failed = item["status"]?.stringValue == "failed" || item["error"].map { $0 != .null } ?? false
            let output = item["error"]?["message"]?.stringValue ?? item["result"].map(\.flattenedText)
            return AgentEventData.tool(
                name: name.isEmpty ? "mcp" : name, input: AgentEventData.summary(of: item["arguments"]), output: completed ? output : nil,
                status: completed ? (failed ? "failed" : "completed") : "running", id: id, raw: raw)
        default:
            return nil
        }
    }
}
