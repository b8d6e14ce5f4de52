import CloudAgentCore
import Foundation

/// The script's position: which turn answers the next main request.
public struct ScriptPlayer: Sendable, Equatable {
    public let script: ModelScript
    /// The index of the turn that answers the next main request (`turns.count` when used up).
    public private(set) var position = 0
    private var servedOfCurrent = 0

    public init(script: ModelScript) {
        self.script = script
    }

    /// The reply to `request` and the index of the turn it came from (nil for the default and
    /// auxiliary texts). Only main requests move the script on.
    public mutating func reply(to request: ModelRequest) -> (reply: ModelReply, turn: Int?) {
        guard request.isMain else { return (.message(AssistantMessage(text: script.auxiliaryText)), nil) }
        guard position < script.turns.count else { return (.message(AssistantMessage(text: script.defaultText)), nil) }
        let index = position
        let turn = script.turns[index]
        servedOfCurrent += 1
        if servedOfCurrent >= turn.times {
            position += 1
            servedOfCurrent = 0
        }
        return (turn.reply(offering: request.tools), index)
    }
}

/// One request the server was asked, as recorded (a line of the `--record` file, an element of
/// `GET /requests`).
public struct RecordedRequest: Sendable, Equatable, Codable {
    /// 1, 2, … in arrival order.
    public var index: Int
    public var at: String
    public var method: String
    /// The path with its query.
    public var path: String
    /// `anthropic-messages`, `openai-responses`, or nil for other requests (probes).
    public var api: ModelAPI?
    public var model: String?
    public var stream: Bool?
    /// Whether the request offered tools and so took the script's next turn.
    public var main: Bool
    /// The index of the script turn that answered it, nil when the default or auxiliary text did.
    public var turn: Int?
    /// What it was answered: `text`, `tool:NAME`, `error:STATUS`, `default`, `auxiliary`,
    /// `probe`, `invalid`.
    public var reply: String
    public var conversationId: String?
    public var tools: [String]
    public var messages: [JSONValue]
}

/// The scripted model: plays the script to main requests and records every request.
public actor ScriptedModel {
    private var player: ScriptPlayer
    private var records: [RecordedRequest] = []
    private let recordFile: FileHandle?

    /// - Parameter recordURL: a JSON-lines file every request is appended to (created if missing).
    public init(script: ModelScript, recordURL: URL? = nil) throws {
        player = ScriptPlayer(script: script)
        if let recordURL {
            if !FileManager.default.fileExists(atPath: recordURL.path) {
                guard FileManager.default.createFile(atPath: recordURL.path, contents: nil) else {
                    throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: recordURL.path])
                }
            }
            let handle = try FileHandle(forWritingTo: recordURL)
            try handle.seekToEnd()
            recordFile = handle
        } else {
            recordFile = nil
        }
    }

    /// The reply to a model request; the request is recorded.
    public func answer(_ request: ModelRequest, method: String, path: String) -> ModelReply {
        let (reply, turn) = player.reply(to: request)
        let summary: String
        switch reply {
        case .failure(let error, _): summary = "error:\(error.status)"
        case .message(let message):
            if let call = message.toolCall {
                summary = "tool:\(call.name)"
            } else if turn != nil {
                summary = "text"
            } else {
                summary = request.isMain ? "default" : "auxiliary"
            }
        }
        append(
            RecordedRequest(
                index: records.count + 1, at: Timestamp.format(Date()), method: method, path: path, api: request.api,
                model: request.model, stream: request.stream, main: request.isMain, turn: turn, reply: summary,
                conversationId: request.conversationID, tools: request.tools.map(\.name), messages: request.messages
            ))
        return reply
    }

    /// Records a request that is not a model turn (a probe, a model list, an unreadable body).
    public func recordOther(method: String, path: String, api: ModelAPI? = nil, reply: String) {
        append(
            RecordedRequest(
                index: records.count + 1, at: Timestamp.format(Date()), method: method, path: path, api: api,
                model: nil, stream: nil, main: false, turn: nil, reply: reply, conversationId: nil, tools: [], messages: []
            ))
    }

    public var requests: [RecordedRequest] { records }

    /// The index of the turn that answers the next main request.
    public var position: Int { player.position }

    private func append(_ record: RecordedRequest) {
        records.append(record)
        guard let recordFile else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(record) else { return }
        line.append(0x0A)
        try? recordFile.write(contentsOf: line)
    }
}
