import Foundation

/// Whether an agent asks before it uses a tool (the session's `approvals`).
public enum ApprovalMode: String, Sendable, Codable, CaseIterable {
    /// The agent uses its tools without asking, inside its sandbox; each automatic decision is
    /// recorded as an `agent` event of kind `log`.
    case auto
    /// Every tool call the agent asks permission for waits for an answer.
    case ask
}

/// What an agent waits for: a permission to use a tool, an answer to a question, or a go-ahead
/// past its session's budget.
public enum InputKind: String, Sendable, Codable, CaseIterable {
    case permission, question, budget
}

/// One of the choices an agent offers with a permission request (ACP's permission options).
public struct InputOption: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case allowOnce = "allow_once"
        case allowAlways = "allow_always"
        case rejectOnce = "reject_once"
        case rejectAlways = "reject_always"

        public var allows: Bool { self == .allowOnce || self == .allowAlways }
        public var always: Bool { self == .allowAlways || self == .rejectAlways }
    }

    public var id: String
    public var name: String
    public var kind: Kind

    public init(id: String, name: String, kind: Kind) {
        self.id = id
        self.name = name
        self.kind = kind
    }

    public var json: JSONValue { ["id": .string(id), "name": .string(name), "kind": .string(kind.rawValue)] }
}

/// How a request was resolved.
public enum InputDecision: String, Sendable, Codable, CaseIterable {
    case allow, deny, answer, timeout, cancelled
}

/// Who resolved a request.
public enum InputResolver: String, Sendable, Codable, CaseIterable {
    /// An API user answered.
    case user
    /// An earlier "always" answer of the session matched.
    case rule
    /// Nobody answered within the input timeout: denied.
    case timeout
    /// The execution was interrupted or ended, or its runtime stopped: cancelled.
    case interrupt
    /// The agent withdrew its request (Claude Code's `control_cancel_request`): cancelled.
    case agent
}

/// A request's end.
public struct InputResolution: Sendable, Equatable, Codable {
    public var decision: InputDecision
    public var by: InputResolver
    public var optionId: String?
    public var answer: JSONValue?
    public var at: Date

    public init(decision: InputDecision, by: InputResolver, optionId: String? = nil, answer: JSONValue? = nil, at: Date) {
        self.decision = decision
        self.by = by
        self.optionId = optionId
        self.answer = answer
        self.at = at
    }

    /// The `input.resolved` event's data (with the request's id).
    public func eventData(requestId: String) -> [String: JSONValue] {
        var data: [String: JSONValue] = ["requestId": .string(requestId), "decision": .string(decision.rawValue), "by": .string(by.rawValue)]
        if let optionId { data["optionId"] = .string(optionId) }
        if let answer { data["answer"] = answer }
        return data
    }
}

/// A permission request or a question an agent asked, waiting for an answer (pending) or
/// resolved: pending → allowed | denied | answered | timed out | cancelled. The first answer wins.
public struct InputRequest: Sendable, Equatable, Codable {
    /// Unique in its session (the runtime makes it: `req_…`).
    public var id: String
    public var executionId: ExecutionID
    public var kind: InputKind
    /// The tool the agent wants to use (a permission).
    public var tool: String?
    /// A summary of the tool's input (a permission), as the agent gave it.
    public var input: JSONValue?
    /// The agent's own choices (a permission), if it offers any.
    public var options: [InputOption]?
    /// The question (a question, or a budget request's text).
    public var question: String?
    /// The answers the agent offers (a question), if any.
    public var choices: [String]?
    public var requestedAt: Date
    public var resolution: InputResolution?

    public init(
        id: String, executionId: ExecutionID, kind: InputKind, tool: String? = nil, input: JSONValue? = nil, options: [InputOption]? = nil,
        question: String? = nil, choices: [String]? = nil, requestedAt: Date
    ) {
        self.id = id
        self.executionId = executionId
        self.kind = kind
        self.tool = tool
        self.input = input
        self.options = options
        self.question = question
        self.choices = choices
        self.requestedAt = requestedAt
    }

    public var isPending: Bool { resolution == nil }

    /// The `input.requested` event's data.
    public var eventData: [String: JSONValue] {
        var data: [String: JSONValue] = ["requestId": .string(id), "kind": .string(kind.rawValue)]
        if let tool { data["tool"] = .string(tool) }
        if let input { data["input"] = input }
        if let options { data["options"] = .array(options.map(\.json)) }
        if let question { data["question"] = .string(question) }
        if let choices { data["choices"] = .array(choices.map { .string($0) }) }
        return data
    }

    /// The request as the API shows it. `deadline` is when a pending one times out.
    public func json(deadline: Date?) -> JSONValue {
        var object = eventData
        object["executionId"] = .string(executionId.rawValue)
        object["requestedAt"] = JSONValue(requestedAt)
        object["status"] = .string(resolution == nil ? "pending" : "resolved")
        object["deadline"] = resolution == nil ? JSONValue(deadline) : .null
        object["resolution"] =
            resolution.map { resolution in
                var data = resolution.eventData(requestId: id)
                data["requestId"] = nil
                data["at"] = JSONValue(resolution.at)
                return .object(data)
            } ?? .null
        return .object(object)
    }
}

/// An "always" answer: later permission requests of the session for the same tool are answered
/// the same way, by rule.
public struct ApprovalRule: Sendable, Equatable, Codable {
    public var tool: String
    public var allow: Bool
    public var requestId: String

    public init(tool: String, allow: Bool, requestId: String) {
        self.tool = tool
        self.allow = allow
        self.requestId = requestId
    }
}

/// A session's input requests (the pending ones and the latest resolved ones) and its
/// "always" rules, kept in the session's record.
public struct SessionInputs: Sendable, Equatable, Codable {
    /// Resolved requests kept beyond the pending ones (the API lists the last 50).
    public static let resolvedKept = 50

    public var requests: [InputRequest]
    public var rules: [ApprovalRule]

    public init(requests: [InputRequest] = [], rules: [ApprovalRule] = []) {
        self.requests = requests
        self.rules = rules
    }

    public var pending: [InputRequest] { requests.filter(\.isPending) }

    /// The first pending request of an execution: what it waits for.
    public func waiting(_ execution: ExecutionID) -> InputRequest? {
        requests.first { $0.executionId == execution && $0.isPending }
    }

    public func request(_ id: String) -> InputRequest? { requests.first { $0.id == id } }

    /// The rule that answers a permission request for this tool, if any.
    public func rule(for request: InputRequest) -> ApprovalRule? {
        guard request.kind == .permission, let tool = request.tool else { return nil }
        return rules.last { $0.tool == tool }
    }

    /// Records a resolution; old resolved requests beyond `resolvedKept` are forgotten.
    public mutating func resolve(_ id: String, _ resolution: InputResolution) {
        guard let index = requests.firstIndex(where: { $0.id == id }) else { return }
        requests[index].resolution = resolution
        let resolved = requests.filter { !$0.isPending }
        if resolved.count > Self.resolvedKept {
            let dropped = Set(
                resolved.sorted { ($0.resolution?.at ?? .distantPast) < ($1.resolution?.at ?? .distantPast) }.prefix(resolved.count - Self.resolvedKept).map(
                    \.id))
            requests.removeAll { dropped.contains($0.id) }
        }
    }

    /// Adds or replaces the rule for a tool.
    public mutating func remember(_ rule: ApprovalRule) {
        rules.removeAll { $0.tool == rule.tool }
        rules.append(rule)
    }

    /// When a pending request times out: the input timeout after it was asked, or after the
    /// control plane could first hear of it (downtime never counts against the user).
    public static func deadline(of request: InputRequest, timeoutMs: Int64, heardSince: Date) -> Date {
        max(request.requestedAt, heardSince).adding(milliseconds: timeoutMs)
    }
}

/// An answer an API user gives to a request (`POST …/input-requests/{requestId}`).
public enum InputAnswer: Sendable, Equatable {
    /// Allow or deny a permission (or a budget request), optionally with one of the agent's
    /// options, optionally for every later request of the same tool.
    case decision(allow: Bool, optionId: String?, always: Bool)
    /// Answer a question: text, or a form's fields.
    case answer(JSONValue)
}

/// What the runtime is told to give the agent.
public struct InputReply: Sendable, Equatable, Codable {
    public var executionId: ExecutionID
    public var requestId: String
    public var decision: InputDecision
    public var optionId: String?
    public var answer: JSONValue?

    public init(executionId: ExecutionID, requestId: String, decision: InputDecision, optionId: String? = nil, answer: JSONValue? = nil) {
        self.executionId = executionId
        self.requestId = requestId
        self.decision = decision
        self.optionId = optionId
        self.answer = answer
    }
}
