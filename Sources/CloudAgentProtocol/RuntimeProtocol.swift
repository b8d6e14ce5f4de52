import Foundation

/// The runtime protocol: JSON text frames over one WebSocket between a session's runtime and
/// the control plane (see docs/runtime-protocol.md). Every frame is an object with a `type`.
public enum RuntimeProtocol {
    public static let version = 1
    /// The route a runtime connects to.
    public static let path = "/v1/runtime/connect"
    /// The upgrade request's headers: the session id and the runtime's own secret.
    public static let sessionHeader = "X-Cloud-Agent-Session"
    public static let secretHeader = "X-Cloud-Agent-Runtime-Secret"
    /// Frames larger than this are refused (a protocol error closes the connection).
    public static let maxFrameBytes = 1 << 20
}

/// An event the runtime reports, numbered by the runtime (`seq` rises by one per runtime process
/// from 1). The control plane acknowledges durable events cumulatively; the runtime resends what
/// was not acknowledged after a reconnect, and the control plane drops what it already has.
public struct RuntimeEvent: Codable, Sendable, Equatable {
    public var seq: Int64
    public var executionId: String
    /// `execution.running`, `agent`, `output` or `execution.ended`.
    public var kind: String
    public var at: Date
    public var data: [String: JSONValue]

    public init(seq: Int64, executionId: String, kind: String, at: Date, data: [String: JSONValue] = [:]) {
        self.seq = seq
        self.executionId = executionId
        self.kind = kind
        self.at = at
        self.data = data
    }

    public enum Kind {
        /// The agent process started. data: `{pid, processGroup}`.
        public static let running = "execution.running"
        /// One normalized agent event. data: `{kind: text|tool|log|error, …, raw}`.
        public static let agent = "agent"
        /// A non-JSON line of the agent's stdout/stderr. data: `{stream: stdout|stderr, line}`.
        public static let output = "output"
        /// The execution ended. data: `{status: completed|failed|interrupted, exitCode?, error?, interruptReason?, conversationId?}`.
        public static let ended = "execution.ended"
        /// The agent asks for permission or an answer, and waits. data: `{requestId, kind:
        /// permission|question|budget, tool?, input?, options?: [{id, name, kind}], question?,
        /// choices?}`; the control plane answers with an `answer` frame.
        public static let inputRequested = "input.requested"
        /// The agent withdrew a request it made (it no longer waits for the answer). data: `{requestId}`.
        public static let inputWithdrawn = "input.withdrawn"
        /// The execution's usage so far (cumulative): `{inputTokens, outputTokens,
        /// cacheReadTokens, cacheWriteTokens, costUsd?}`, as the agent reported it. Not an event
        /// of the session's log: it is kept on the execution.
        public static let usage = "usage"
    }

    /// The key of `execution.ended`'s data that carries the agent's own conversation id.
    public static let conversationIdKey = "conversationId"
}

/// Runtime → control plane.
public enum RuntimeMessage: Sendable, Equatable {
    /// First frame after connecting: who the runtime is and what it is doing.
    case hello(runtimeId: String, protocolVersion: Int, activeExecutionId: String?, lastSeq: Int64)
    case event(RuntimeEvent)
    /// Liveness of the active execution, with its progress (agent events so far).
    case heartbeat(executionId: String, at: Date, events: Int64)
    case pong(nonce: Int64)
}

/// Control plane → runtime.
public enum ControlMessage: Sendable, Equatable {
    /// Answer to hello: events up to `ackedSeq` are durable; the timing the runtime must keep.
    /// `idleTimeoutMs` is the session's idle timeout (nil from control planes that predate it).
    /// `controlUrls` are the runtime routes of every control-plane node (they share one database,
    /// so any of them serves this runtime): the runtime reconnects to them when its node goes
    /// away. Nil (left out of the frame) from a control plane that does not name its nodes.
    case welcome(ackedSeq: Int64, heartbeatIntervalMs: Int64, stopGraceMs: Int64, idleTimeoutMs: Int64?, controlUrls: [String]?)
    /// The session's settings changed (`PATCH idleTimeoutMs`): the runtime keeps the new value.
    case settings(idleTimeoutMs: Int64)
    /// The control plane's live nodes changed (a node joined, left or was lost): their runtime
    /// routes, which replace the list the runtime goes round when its node goes away.
    case nodes(controlUrls: [String])
    /// Events up to `seq` are durable.
    case ack(seq: Int64)
    /// Run one execution's agent. A runtime ignores an execution id it has already run.
    case execute(ExecuteCommand)
    /// Stop this execution's agent: SIGTERM to its process group, SIGKILL after the grace.
    case kill(executionId: String, reason: String)
    /// Stop the active agent (reported `interrupted`), then exit.
    case shutdown(reason: String)
    case ping(nonce: Int64)
    /// The answer to an input request the agent is waiting for. A runtime ignores an answer to
    /// a request it is not waiting for (a repeat after a reconnect).
    case answer(InputAnswerFrame)
    /// Hold this execution's agent where it is (SIGSTOP to its processes) until `resume`, or a
    /// kill (which lets it go first). A runtime that predates them ignores both (an unknown type).
    case pause(executionId: String)
    case resume(executionId: String)
}

/// An answer to an agent's input request, for the runtime to give the agent in its own protocol.
public struct InputAnswerFrame: Codable, Sendable, Equatable {
    public var executionId: String
    public var requestId: String
    /// `allow`, `deny`, `answer`, `timeout` (a deny: nobody answered) or `cancelled`.
    public var decision: String
    /// The agent's option the user picked (or the one matching the decision).
    public var optionId: String?
    /// A question's answer: text, or a form's fields.
    public var answer: JSONValue?

    public init(executionId: String, requestId: String, decision: String, optionId: String? = nil, answer: JSONValue? = nil) {
        self.executionId = executionId
        self.requestId = requestId
        self.decision = decision
        self.optionId = optionId
        self.answer = answer
    }

    /// Whether the agent may go ahead (an allow, or an answer).
    public var allows: Bool { decision == "allow" || decision == "answer" }
}

/// What to run for an execution.
public struct ExecuteCommand: Codable, Sendable, Equatable {
    public var executionId: String
    /// The agent's name as the session gave it (`scripted`, `claude-code`, a command agent's name…).
    public var agent: String
    public var prompt: String
    public var mode: String?
    public var model: String?
    /// How to run the agent, as the control plane resolved it; nil means the built-in `scripted`.
    public var launch: AgentLaunch?
    /// The agent's own conversation to resume (from an earlier execution of the session).
    public var conversationId: String?
    /// `ask`: the agent's permission requests wait for an answer from the control plane; nil
    /// (`auto`): the runtime allows them itself and records each as an `agent` event of kind `log`.
    public var approvals: String?
    /// The session's MCP servers, `{NAME: {command, args?, env?} | {url, headers?}}` (a value
    /// `{"secret": NAME}` is the session secret of that name, in the runtime's environment);
    /// nil when it has none.
    public var mcpServers: JSONValue?

    public init(
        executionId: String, agent: String, prompt: String, mode: String? = nil, model: String? = nil,
        launch: AgentLaunch? = nil, conversationId: String? = nil, approvals: String? = nil, mcpServers: JSONValue? = nil
    ) {
        self.mcpServers = mcpServers
        self.executionId = executionId
        self.agent = agent
        self.prompt = prompt
        self.mode = mode
        self.model = model
        self.launch = launch
        self.conversationId = conversationId
        self.approvals = approvals
    }

    /// Whether permission requests go to the user.
    public var asks: Bool { approvals == "ask" }
}

/// An agent as the control plane's registry resolved it: which adapter runs it and where its
/// binary is.
public struct AgentLaunch: Codable, Sendable, Equatable {
    /// `scripted`, `claude-code`, `codex`, `opencode`, `kilo`, `command` or `acp`.
    public var kind: String
    /// The agent's executable (absolute path); nil for `scripted` (the runtime itself).
    public var binary: String?
    /// A `command` agent's argument template (after the binary): `{prompt}`, `{model}`, `{mode}`
    /// and `{conversationId}` are replaced; an argument that is only a placeholder whose value is
    /// absent is left out. Without `{prompt}` the prompt goes to standard input.
    public var arguments: [String]?
    /// A `command` agent's output: `jsonl` (JSON objects, normalized like the scripted agent's) or
    /// `text` (each line an `output` event).
    public var output: String?
    /// `acp`: the runtime drives the agent as an Agent Client Protocol client over its stdio (one
    /// process for the runtime's life, a prompt per execution); nil: one process per execution,
    /// its output read in the format `kind` names.
    public var `protocol`: String?
    /// How long an ACP agent may take to answer `initialize`, `session/new` and the like (not a
    /// prompt); nil: `AgentLaunch.defaultACPTimeoutMs`.
    public var timeoutMs: Int64?

    /// The `protocol` of ACP agents.
    public static let acp = "acp"
    /// One minute: a Python agent that loads a large SDK, or checks its model list, takes seconds.
    public static let defaultACPTimeoutMs: Int64 = 60_000

    public init(
        kind: String, binary: String? = nil, arguments: [String]? = nil, output: String? = nil, protocol: String? = nil, timeoutMs: Int64? = nil
    ) {
        self.kind = kind
        self.binary = binary
        self.arguments = arguments
        self.output = output
        self.protocol = `protocol`
        self.timeoutMs = timeoutMs
    }

    /// Whether the runtime drives this agent over ACP.
    public var isACP: Bool { self.protocol == Self.acp }
}

// MARK: - Wire format

/// Why a frame was refused.
public struct ProtocolError: Error, Equatable, CustomStringConvertible {
    public var description: String
    /// Set when the frame is well formed but of a type this side does not know (one a newer peer
    /// may send): such a frame is ignored, not a reason to drop the connection.
    public var unknownType: String?

    public init(_ description: String) { self.description = description }

    static func unknown(_ type: String, _ direction: String) -> ProtocolError {
        var error = ProtocolError("unknown \(direction) frame type \(type)")
        error.unknownType = type
        return error
    }
}

/// Encodes and decodes frames. Timestamps are milliseconds since 1970.
public enum ProtocolCoding {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return decoder
    }

    private struct Frame: Codable {
        var type: String
        var runtimeId: String?
        var protocolVersion: Int?
        var activeExecutionId: String?
        var lastSeq: Int64?
        var event: RuntimeEvent?
        var executionId: String?
        var at: Date?
        var events: Int64?
        var nonce: Int64?
        var ackedSeq: Int64?
        var heartbeatIntervalMs: Int64?
        var stopGraceMs: Int64?
        var idleTimeoutMs: Int64?
        var controlUrls: [String]?
        var seq: Int64?
        var execute: ExecuteCommand?
        var reason: String?
        var answer: InputAnswerFrame?

        init(type: String) { self.type = type }
    }

    public static func encode(_ message: RuntimeMessage) -> String {
        var frame: Frame
        switch message {
        case .hello(let runtimeId, let version, let active, let lastSeq):
            frame = Frame(type: "hello")
            frame.runtimeId = runtimeId
            frame.protocolVersion = version
            frame.activeExecutionId = active
            frame.lastSeq = lastSeq
        case .event(let event):
            frame = Frame(type: "event")
            frame.event = event
        case .heartbeat(let executionId, let at, let events):
            frame = Frame(type: "heartbeat")
            frame.executionId = executionId
            frame.at = at
            frame.events = events
        case .pong(let nonce):
            frame = Frame(type: "pong")
            frame.nonce = nonce
        }
        return text(frame)
    }

    public static func encode(_ message: ControlMessage) -> String {
        var frame: Frame
        switch message {
        case .welcome(let acked, let interval, let grace, let idleTimeout, let controlUrls):
            frame = Frame(type: "welcome")
            frame.ackedSeq = acked
            frame.heartbeatIntervalMs = interval
            frame.stopGraceMs = grace
            frame.idleTimeoutMs = idleTimeout
            frame.controlUrls = controlUrls
        case .settings(let idleTimeout):
            frame = Frame(type: "settings")
            frame.idleTimeoutMs = idleTimeout
        case .nodes(let controlUrls):
            frame = Frame(type: "nodes")
            frame.controlUrls = controlUrls
        case .ack(let seq):
            frame = Frame(type: "ack")
            frame.seq = seq
        case .execute(let command):
            frame = Frame(type: "execute")
            frame.execute = command
        case .kill(let executionId, let reason):
            frame = Frame(type: "kill")
            frame.executionId = executionId
            frame.reason = reason
        case .shutdown(let reason):
            frame = Frame(type: "shutdown")
            frame.reason = reason
        case .ping(let nonce):
            frame = Frame(type: "ping")
            frame.nonce = nonce
        case .answer(let answer):
            frame = Frame(type: "answer")
            frame.answer = answer
        case .pause(let executionId):
            frame = Frame(type: "pause")
            frame.executionId = executionId
        case .resume(let executionId):
            frame = Frame(type: "resume")
            frame.executionId = executionId
        }
        return text(frame)
    }

    private static func text(_ frame: Frame) -> String {
        // Encoding these plain structs cannot fail.
        String(decoding: try! encoder().encode(frame), as: UTF8.self)
    }

    private static func frame(_ text: String) throws(ProtocolError) -> Frame {
        guard text.utf8.count <= RuntimeProtocol.maxFrameBytes else { throw ProtocolError("frame larger than \(RuntimeProtocol.maxFrameBytes) bytes") }
        do {
            return try decoder().decode(Frame.self, from: Data(text.utf8))
        } catch {
            throw ProtocolError("not a protocol frame: \(error)")
        }
    }

    public static func decodeRuntimeMessage(_ text: String) throws(ProtocolError) -> RuntimeMessage {
        let frame = try frame(text)
        switch frame.type {
        case "hello":
            guard let runtimeId = frame.runtimeId, let version = frame.protocolVersion else { throw ProtocolError("hello needs runtimeId and protocolVersion") }
            return .hello(runtimeId: runtimeId, protocolVersion: version, activeExecutionId: frame.activeExecutionId, lastSeq: frame.lastSeq ?? 0)
        case "event":
            guard let event = frame.event, event.seq > 0 else { throw ProtocolError("event needs an event with seq ≥ 1") }
            return .event(event)
        case "heartbeat":
            guard let executionId = frame.executionId, let at = frame.at else { throw ProtocolError("heartbeat needs executionId and at") }
            return .heartbeat(executionId: executionId, at: at, events: frame.events ?? 0)
        case "pong":
            return .pong(nonce: frame.nonce ?? 0)
        default:
            throw ProtocolError.unknown(frame.type, "runtime")
        }
    }

    public static func decodeControlMessage(_ text: String) throws(ProtocolError) -> ControlMessage {
        let frame = try frame(text)
        switch frame.type {
        case "welcome":
            guard let acked = frame.ackedSeq, let interval = frame.heartbeatIntervalMs, interval > 0 else {
                throw ProtocolError("welcome needs ackedSeq and heartbeatIntervalMs")
            }
            // An unusable idle timeout is left out rather than refusing the welcome.
            let idleTimeout = frame.idleTimeoutMs.flatMap { $0 > 0 ? $0 : nil }
            return .welcome(
                ackedSeq: acked, heartbeatIntervalMs: interval, stopGraceMs: frame.stopGraceMs ?? 10_000, idleTimeoutMs: idleTimeout,
                controlUrls: frame.controlUrls
            )
        case "settings":
            guard let idleTimeout = frame.idleTimeoutMs, idleTimeout > 0 else { throw ProtocolError("settings needs idleTimeoutMs ≥ 1") }
            return .settings(idleTimeoutMs: idleTimeout)
        case "nodes":
            guard let controlUrls = frame.controlUrls, !controlUrls.isEmpty else { throw ProtocolError("nodes needs controlUrls") }
            return .nodes(controlUrls: controlUrls)
        case "ack":
            guard let seq = frame.seq else { throw ProtocolError("ack needs seq") }
            return .ack(seq: seq)
        case "execute":
            guard let command = frame.execute else { throw ProtocolError("execute needs execute") }
            return .execute(command)
        case "kill":
            guard let executionId = frame.executionId else { throw ProtocolError("kill needs executionId") }
            return .kill(executionId: executionId, reason: frame.reason ?? "user")
        case "shutdown":
            return .shutdown(reason: frame.reason ?? "shutdown")
        case "ping":
            return .ping(nonce: frame.nonce ?? 0)
        case "answer":
            guard let answer = frame.answer else { throw ProtocolError("answer needs answer") }
            return .answer(answer)
        case "pause", "resume":
            guard let executionId = frame.executionId else { throw ProtocolError("\(frame.type) needs executionId") }
            return frame.type == "pause" ? .pause(executionId: executionId) : .resume(executionId: executionId)
        default:
            throw ProtocolError.unknown(frame.type, "control")
        }
    }
}
