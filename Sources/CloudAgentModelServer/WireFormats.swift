import CloudAgentCore
import Foundation

/// One server-sent event: `event: NAME` and `data: JSON`, then a blank line.
public struct ServerSentEvent: Sendable, Equatable {
    public var event: String
    public var data: JSONValue

    public init(event: String, data: JSONValue) {
        self.event = event
        self.data = data
    }

    public var encoded: String { "event: \(event)\ndata: \(JSONText.encode(data))\n\n" }
}

/// Identifiers in each API's style (`msg_…`, `toolu_…`, `resp_…`, `call_…`).
enum WireID {
    static func make(_ prefix: String) -> String {
        prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
    }
}

/// A rough output token count for the usage figures.
func outputTokens(_ message: AssistantMessage) -> Int {
    var characters = message.text?.count ?? 0
    if let call = message.toolCall {
        switch call.input {
        case .arguments(let value): characters += JSONText.encode(value).count
        case .freeform(let text): characters += text.count
        }
    }
    return max(1, characters / 4)
}

// MARK: - Anthropic Messages API

/// The Anthropic Messages API's shapes: the streamed events, the whole message, the error body.
public enum AnthropicMessagesWire {
    /// The error `type` Anthropic uses for an HTTP status.
    public static func errorType(status: Int) -> String {
        switch status {
        case 400, 422: "invalid_request_error"
        case 401: "authentication_error"
        case 402: "billing_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 413: "request_too_large"
        case 429: "rate_limit_error"
        case 504: "timeout_error"
        case 529: "overloaded_error"
        default: "api_error"
        }
    }

    public static func errorBody(_ error: ScriptedError) -> JSONValue {
        [
            "type": "error",
            "error": ["type": .string(error.type ?? errorType(status: error.status)), "message": .string(error.message)],
            "request_id": .string(WireID.make("req_")),
        ]
    }

    static func blocks(_ message: AssistantMessage) -> [JSONValue] {
        var blocks: [JSONValue] = []
        if let text = message.text, !text.isEmpty { blocks.append(["type": "text", "text": .string(text)]) }
        if let call = message.toolCall {
            blocks.append(["type": "tool_use", "id": .string(WireID.make("toolu_")), "name": .string(call.name), "input": call.argumentsObject])
        }
        return blocks
    }

    static func stopReason(_ message: AssistantMessage) -> JSONValue { message.toolCall == nil ? "end_turn" : "tool_use" }

    static func messageObject(id: String, model: String, content: [JSONValue], stopReason: JSONValue, inputTokens: Int, outputTokens: Int) -> JSONValue {
        [
            "id": .string(id), "type": "message", "role": "assistant", "model": .string(model),
            "content": .array(content), "stop_reason": stopReason, "stop_sequence": .null,
            "usage": ["input_tokens": .number(Double(inputTokens)), "output_tokens": .number(Double(outputTokens))],
        ]
    }

    /// The answer to a non-streaming request.
    public static func message(_ message: AssistantMessage, model: String, inputTokens: Int) -> JSONValue {
        messageObject(
            id: WireID.make("msg_"), model: model, content: blocks(message), stopReason: stopReason(message),
            inputTokens: inputTokens, outputTokens: outputTokens(message)
        )
    }

    /// The streamed answer: message_start, a content block per text and tool call (text_delta,
    /// input_json_delta), message_delta with the stop reason, message_stop.
    public static func events(_ message: AssistantMessage, model: String, inputTokens: Int) -> [ServerSentEvent] {
        var events = [start(model: model, inputTokens: inputTokens)]
        var index = 0
        let chunks = message.textChunks
        if !chunks.isEmpty {
            events.append(event("content_block_start", ["index": .number(Double(index)), "content_block": ["type": "text", "text": ""]]))
            for chunk in chunks {
                events.append(event("content_block_delta", ["index": .number(Double(index)), "delta": ["type": "text_delta", "text": .string(chunk)]]))
            }
            events.append(event("content_block_stop", ["index": .number(Double(index))]))
            index += 1
        }
        if let call = message.toolCall {
            events.append(
                event(
                    "content_block_start",
                    [
                        "index": .number(Double(index)),
                        "content_block": ["type": "tool_use", "id": .string(WireID.make("toolu_")), "name": .string(call.name), "input": [:]],
                    ]))
            events.append(
                event(
                    "content_block_delta",
                    [
                        "index": .number(Double(index)),
                        "delta": ["type": "input_json_delta", "partial_json": .string(JSONText.encode(call.argumentsObject))],
                    ]))
            events.append(event("content_block_stop", ["index": .number(Double(index))]))
        }
        events.append(
            event(
                "message_delta",
                [
                    "delta": ["stop_reason": stopReason(message), "stop_sequence": .null],
                    "usage": ["output_tokens": .number(Double(outputTokens(message)))],
                ]))
        events.append(event("message_stop", [:]))
        return events
    }

    /// A stream that starts and then fails with an `error` event.
    public static func failureEvents(_ error: ScriptedError, model: String, inputTokens: Int) -> [ServerSentEvent] {
        var body = errorBody(error).objectValue ?? [:]
        body["request_id"] = nil
        return [start(model: model, inputTokens: inputTokens), event("error", body)]
    }

    static func start(model: String, inputTokens: Int) -> ServerSentEvent {
        event(
            "message_start",
            [
                "message": messageObject(id: WireID.make("msg_"), model: model, content: [], stopReason: .null, inputTokens: inputTokens, outputTokens: 1)
            ])
    }

    static func event(_ name: String, _ fields: [String: JSONValue]) -> ServerSentEvent {
        var data = fields
        data["type"] = .string(name)
        return ServerSentEvent(event: name, data: .object(data))
    }
}

// MARK: - OpenAI Responses API

/// The OpenAI Responses API's shapes: the streamed events, the response object, the error body.
public enum OpenAIResponsesWire {
    public static func errorType(status: Int) -> String {
        switch status {
        case 401: "authentication_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 429: "rate_limit_error"
        case 400..<500: "invalid_request_error"
        default: "server_error"
        }
    }

    public static func errorBody(_ error: ScriptedError) -> JSONValue {
        let type = error.type ?? errorType(status: error.status)
        return ["error": ["message": .string(error.message), "type": .string(type), "param": .null, "code": .string(type)]]
    }

    /// The output items of a message: a `message` item for the text, then a `function_call` or
    /// `custom_tool_call` item.
    static func outputItems(_ message: AssistantMessage) -> [JSONValue] {
        var items: [JSONValue] = []
        if let text = message.text, !text.isEmpty {
            items.append(messageItem(id: WireID.make("msg_"), text: text, status: "completed"))
        }
        if let call = message.toolCall {
            items.append(callItem(call, id: nil, callID: WireID.make("call_"), status: "completed", complete: true))
        }
        return items
    }

    static func messageItem(id: String, text: String?, status: String) -> JSONValue {
        [
            "id": .string(id), "type": "message", "status": .string(status), "role": "assistant",
            "content": .array(text.map { [["type": "output_text", "text": .string($0), "annotations": []]] } ?? []),
        ]
    }

    static func callItem(_ call: ModelToolCall, id: String?, callID: String, status: String, complete: Bool) -> JSONValue {
        var item: JSONValue
        switch call.input {
        case .arguments(let arguments):
            item = [
                "id": .string(id ?? WireID.make("fc_")), "type": "function_call", "status": .string(status), "call_id": .string(callID),
                "name": .string(call.name), "arguments": .string(complete ? JSONText.encode(arguments) : ""),
            ]
        case .freeform(let input):
            item = [
                "id": .string(id ?? WireID.make("ctc_")), "type": "custom_tool_call", "status": .string(status), "call_id": .string(callID),
                "name": .string(call.name), "input": .string(complete ? input : ""),
            ]
        }
        if let namespace = call.namespace, case .object(var object) = item {
            object["namespace"] = .string(namespace)
            item = .object(object)
        }
        return item
    }

    static func response(id: String, model: String, status: String, output: [JSONValue], usage: JSONValue = .null, error: JSONValue = .null) -> JSONValue {
        [
            "id": .string(id), "object": "response", "created_at": .number(Date().timeIntervalSince1970.rounded(.down)),
            "status": .string(status), "model": .string(model), "output": .array(output), "usage": usage, "error": error,
            "incomplete_details": .null,
        ]
    }

    static func usage(inputTokens: Int, outputTokens: Int) -> JSONValue {
        [
            "input_tokens": .number(Double(inputTokens)), "input_tokens_details": ["cached_tokens": 0],
            "output_tokens": .number(Double(outputTokens)), "output_tokens_details": ["reasoning_tokens": 0],
            "total_tokens": .number(Double(inputTokens + outputTokens)),
        ]
    }

    /// The answer to a non-streaming request.
    public static func response(_ message: AssistantMessage, model: String, inputTokens: Int) -> JSONValue {
        response(
            id: WireID.make("resp_"), model: model, status: "completed", output: outputItems(message),
            usage: usage(inputTokens: inputTokens, outputTokens: outputTokens(message))
        )
    }

    /// The streamed answer: response.created, response.in_progress, per output item
    /// output_item.added, its deltas (output_text / function_call_arguments /
    /// custom_tool_call_input) and output_item.done, then response.completed.
    public static func events(_ message: AssistantMessage, model: String, inputTokens: Int) -> [ServerSentEvent] {
        let responseID = WireID.make("resp_")
        var events: [ServerSentEvent] = [
            event("response.created", ["response": response(id: responseID, model: model, status: "in_progress", output: [])]),
            event("response.in_progress", ["response": response(id: responseID, model: model, status: "in_progress", output: [])]),
        ]
        var output: [JSONValue] = []
        let chunks = message.textChunks
        if !chunks.isEmpty, let text = message.text {
            let id = WireID.make("msg_")
            let index = JSONValue.number(Double(output.count))
            let part: JSONValue = ["type": "output_text", "text": "", "annotations": []]
            let fullPart: JSONValue = ["type": "output_text", "text": .string(text), "annotations": []]
            events.append(event("response.output_item.added", ["output_index": index, "item": messageItem(id: id, text: nil, status: "in_progress")]))
            events.append(event("response.content_part.added", ["item_id": .string(id), "output_index": index, "content_index": 0, "part": part]))
            for chunk in chunks {
                events.append(
                    event("response.output_text.delta", ["item_id": .string(id), "output_index": index, "content_index": 0, "delta": .string(chunk)]))
            }
            events.append(event("response.output_text.done", ["item_id": .string(id), "output_index": index, "content_index": 0, "text": .string(text)]))
            events.append(event("response.content_part.done", ["item_id": .string(id), "output_index": index, "content_index": 0, "part": fullPart]))
            let item = messageItem(id: id, text: text, status: "completed")
            events.append(event("response.output_item.done", ["output_index": index, "item": item]))
            output.append(item)
        }
        if let call = message.toolCall {
            let callID = WireID.make("call_")
            let id: String
            let deltas: (delta: String, done: String, field: String, value: String)
            switch call.input {
            case .arguments(let arguments):
                id = WireID.make("fc_")
                deltas = ("response.function_call_arguments.delta", "response.function_call_arguments.done", "arguments", JSONText.encode(arguments))
            case .freeform(let input):
                id = WireID.make("ctc_")
                deltas = ("response.custom_tool_call_input.delta", "response.custom_tool_call_input.done", "input", input)
            }
            let index = JSONValue.number(Double(output.count))
            events.append(
                event(
                    "response.output_item.added",
                    [
                        "output_index": index, "item": callItem(call, id: id, callID: callID, status: "in_progress", complete: false),
                    ]))
            events.append(event(deltas.delta, ["item_id": .string(id), "output_index": index, "delta": .string(deltas.value)]))
            events.append(event(deltas.done, ["item_id": .string(id), "output_index": index, deltas.field: .string(deltas.value)]))
            let item = callItem(call, id: id, callID: callID, status: "completed", complete: true)
            events.append(event("response.output_item.done", ["output_index": index, "item": item]))
            output.append(item)
        }
        events.append(
            event(
                "response.completed",
                [
                    "response": response(
                        id: responseID, model: model, status: "completed", output: output,
                        usage: usage(inputTokens: inputTokens, outputTokens: outputTokens(message))
                    )
                ]))
        return numbered(events)
    }

    /// A stream that starts and then fails with `response.failed`.
    public static func failureEvents(_ error: ScriptedError, model: String, inputTokens: Int) -> [ServerSentEvent] {
        let responseID = WireID.make("resp_")
        let type = error.type ?? errorType(status: error.status)
        return numbered([
            event("response.created", ["response": response(id: responseID, model: model, status: "in_progress", output: [])]),
            event(
                "response.failed",
                [
                    "response": response(
                        id: responseID, model: model, status: "failed", output: [],
                        error: ["code": .string(type), "message": .string(error.message)]
                    )
                ]),
        ])
    }

    static func event(_ name: String, _ fields: [String: JSONValue]) -> ServerSentEvent {
        var data = fields
        data["type"] = .string(name)
        return ServerSentEvent(event: name, data: .object(data))
    }

    /// Every Responses event carries its `sequence_number`.
    static func numbered(_ events: [ServerSentEvent]) -> [ServerSentEvent] {
        events.enumerated().map { number, event in
            var event = event
            if case .object(var fields) = event.data {
                fields["sequence_number"] = .number(Double(number))
                event.data = .object(fields)
            }
            return event
        }
    }
}
