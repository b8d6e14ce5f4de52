import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: events")
struct EventStoreTests {
    /// A session with two executions and ten events, one a second from `date(0)`:
    /// ids 1…10; id 1 is runtime.started (no execution), then agent (even ids) and output (odd ids) by turns;
    /// ids 2–5 belong to `first`, 6–10 to `second`.
    struct Scenario {
        let session: SessionRecord
        let first: ExecutionID
        let second: ExecutionID
        let events: [Event]
    }

    static func scenario(in store: any SessionStore) async throws -> Scenario {
        let session = try await store.insertFixtureSession()
        var first = try Fixture.running(of: session.id, at: 0)
        let second = Fixture.execution(of: session.id, at: 5_000)
        try await store.commit(
            SessionChange(
                sessionId: session.id, newExecution: first,
                events: [Fixture.event(EventType.runtimeStarted, at: 0, data: ["startedBy": "test"])]
            ))
        var events: [Event] = []
        for index: Int64 in 1...4 {
            let type = index.isMultiple(of: 2) ? EventType.output : EventType.agent
            events += try await store.commit(
                SessionChange(
                    sessionId: session.id, events: [Fixture.event(type, at: index * 1_000, execution: first.id, data: ["n": .number(Double(index))])]
                ))
        }
        try first.end(.completed, at: Fixture.date(4_500), exitCode: 0, reportedByRuntime: true)
        events += try await store.commit(
            SessionChange(
                sessionId: session.id, newExecution: second, executions: [first],
                events: (5...9).map { (index: Int64) in
                    let type = index.isMultiple(of: 2) ? EventType.output : EventType.agent
                    return Fixture.event(type, at: index * 1_000, execution: second.id, data: ["n": .number(Double(index))])
                }
            ))
        let all = try await store.allEvents(of: session.id)
        #expect(all.dropFirst().elementsEqual(events))
        return Scenario(session: session, first: first.id, second: second.id, events: all)
    }

    @Test(arguments: StoreBackend.allCases)
    func queriesFilterByIdLimitExecutionAndType(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let scenario = try await Self.scenario(in: store)
            let id = scenario.session.id
            let all = scenario.events
            #expect(all.map(\.id) == Array(1...10))
            #expect(all[0].executionId == nil)
            #expect(all[0].type == EventType.runtimeStarted)
            #expect(all[0].data == ["startedBy": "test"])
            #expect(all[0].at == Fixture.date(0))

            func ids(_ query: EventQuery) async throws -> [Int64] { try await store.events(of: id, query).map(\.id) }

            // afterId and limit.
            #expect(try await ids(EventQuery(afterId: 3)) == Array(4...10))
            #expect(try await ids(EventQuery(afterId: 9)) == [10])
            #expect(try await ids(EventQuery(afterId: 10)) == [])
            #expect(try await ids(EventQuery(afterId: 99)) == [])
            #expect(try await ids(EventQuery(limit: 3)) == [1, 2, 3])
            #expect(try await ids(EventQuery(afterId: 4, limit: 2)) == [5, 6])
            #expect(try await ids(EventQuery(limit: 0)) == [])
            #expect(try await store.events(of: id, EventQuery(afterId: 4, limit: 2)) == Array(all[4...5]))

            // The execution filter (events without an execution never match).
            #expect(try await ids(EventQuery(executionId: scenario.first)) == [2, 3, 4, 5])
            #expect(try await ids(EventQuery(executionId: scenario.second)) == [6, 7, 8, 9, 10])
            #expect(try await ids(EventQuery(executionId: ExecutionID(at: Fixture.date(0)))) == [])

            // The type filter.
            #expect(try await ids(EventQuery(types: [EventType.runtimeStarted])) == [1])
            #expect(try await ids(EventQuery(types: [EventType.agent])) == [2, 4, 6, 8, 10])
            #expect(try await ids(EventQuery(types: [EventType.agent, EventType.output])) == Array(2...10))
            #expect(try await ids(EventQuery(types: ["no.such.type"])) == [])
            #expect(try await ids(EventQuery(types: [])) == [])

            // All of them together.
            #expect(try await ids(EventQuery(afterId: 2, executionId: scenario.second, types: [EventType.output])) == [7, 9])
            #expect(try await ids(EventQuery(afterId: 6, limit: 1, executionId: scenario.second, types: [EventType.output])) == [7])
            #expect(try await ids(EventQuery(afterId: 2, limit: 10, executionId: scenario.first, types: [EventType.agent, EventType.runtimeStarted])) == [4])

            // Another session's events are not visible.
            let other = try await store.insertFixtureSession()
            #expect(try await store.allEvents(of: other.id).isEmpty)
            #expect(try await store.events(of: other.id, EventQuery(executionId: scenario.first)).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func oldestEventAtIsTheFirstRemainingEvent(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let empty = try await store.insertFixtureSession()
            #expect(try await store.oldestEventAt(of: empty.id) == nil)
            #expect(try await store.oldestEventAt(of: SessionID()) == nil)

            let scenario = try await Self.scenario(in: store)
            #expect(try await store.oldestEventAt(of: scenario.session.id) == Fixture.date(0))
            try await store.deleteEvents(of: scenario.session.id, olderThan: Fixture.date(2_500))
            #expect(try await store.oldestEventAt(of: scenario.session.id) == Fixture.date(3_000))
            try await store.deleteEvents(of: scenario.session.id, olderThan: Fixture.date(100_000))
            #expect(try await store.oldestEventAt(of: scenario.session.id) == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func deleteEventsRemovesExactlyTheOlderOnes(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let scenario = try await Self.scenario(in: store)
            let neighbour = try await Self.scenario(in: store)
            let id = scenario.session.id

            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(0)) == 0)
            // Strictly older: the event at exactly 4_000 stays.
            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(4_000)) == 4)
            #expect(try await store.allEvents(of: id) == Array(scenario.events[4...]))
            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(4_000)) == 0)
            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(4_001)) == 1)
            #expect(try await store.allEvents(of: id).map(\.id) == Array(6...10))
            #expect(try await store.lastEventId(of: id) == 10)

            // The other session's events of the same times are untouched.
            #expect(try await store.allEvents(of: neighbour.session.id) == neighbour.events)
            #expect(try await store.deleteEvents(of: SessionID(), olderThan: Fixture.date(100_000)) == 0)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func eventIdsAreNeverReusedAfterDeletion(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let scenario = try await Self.scenario(in: store)
            let id = scenario.session.id
            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(5_500)) == 6)
            let next = try await store.commit(SessionChange(sessionId: id, events: [Fixture.event(at: 20_000)]))
            #expect(next.map(\.id) == [11])

            // Even when every event is gone.
            #expect(try await store.deleteEvents(of: id, olderThan: Fixture.date(100_000)) == 5)
            #expect(try await store.allEvents(of: id).isEmpty)
            #expect(try await store.lastEventId(of: id) == 11)
            let afterAll = try await store.commit(SessionChange(sessionId: id, events: [Fixture.event(at: 200_000), Fixture.event(at: 200_001)]))
            #expect(afterAll.map(\.id) == [12, 13])
            #expect(try await store.allEvents(of: id) == afterAll)
            #expect(try await store.events(of: id, EventQuery(afterId: 11)) == afterAll)
            #expect(try await store.lastEventId(of: id) == 13)
        }
    }
}
