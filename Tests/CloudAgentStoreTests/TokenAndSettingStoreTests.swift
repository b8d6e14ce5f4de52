import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: tokens")
struct TokenStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func savedTokenIsFoundByItsHash(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let withoutOrg = BearerToken.hash("token-a")
            let withOrg = BearerToken.hash("token-b")
            try await store.saveToken(hash: withoutOrg, owner: Fixture.alice, createdAt: Fixture.date(0))
            try await store.saveToken(hash: withOrg, owner: Fixture.aliceAtX, createdAt: Fixture.date(1))

            #expect(try await store.owner(forTokenHash: withoutOrg) == Fixture.alice)
            #expect(try await store.owner(forTokenHash: withoutOrg)?.org == nil)
            #expect(try await store.owner(forTokenHash: withOrg) == Fixture.aliceAtX)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func unknownHashHasNoOwner(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            #expect(try await store.owner(forTokenHash: BearerToken.hash("nothing saved yet")) == nil)
            try await store.saveToken(hash: BearerToken.hash("known"), owner: Fixture.bob, createdAt: Fixture.date(0))
            #expect(try await store.owner(forTokenHash: BearerToken.hash("unknown")) == nil)
        }
    }
}

@Suite("Store: settings")
struct SettingStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func firstSavedValueWinsForever(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let first = try await store.settingSavingIfAbsent("signing-key", value: "first")
            #expect(first == "first")
            #expect(try await store.settingSavingIfAbsent("signing-key", value: "second") == "first")
            #expect(try await store.settingSavingIfAbsent("signing-key", value: "third") == "first")
            #expect(try await store.settingSavingIfAbsent("other-key", value: "other") == "other")
            #expect(try await store.settingSavingIfAbsent("signing-key", value: "fourth") == "first")
        }
    }
}
