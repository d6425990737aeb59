/*
 * tests/unit/test-appliance.c — unit tests of vessel/appliance.h: manifests in the spellings
 * VirtualBox and VMware write and hostile ones (wrong lengths, bad hex, duplicates, NUL bytes),
 * OVF descriptors (vessel's own round trip, a VMware-style descriptor, and hostile ones: hrefs
 * leaving the directory, dangling references, absurd sizes, entities), XenServer ova.xml.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "vessel/appliance.h"
#include "vessel/util.h"

static bool message_contains(const char *needle)
{
    const char *m = vs_error_message();
    if (!strstr(m, needle)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", m, needle);
        return false;
    }
    return true;
}

static const char sha256_hex[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
static const char sha1_hex[] = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";

TEST(manifest_vmware_and_virtualbox_spellings)
{
    char text[512];
    snprintf(text, sizeof(text), "SHA256(vm.ovf)= %s\r\n\nSHA1 (disk (1).vmdk) = %s\n  SHA1(x)=%s",
             sha256_hex, sha1_hex, sha1_hex);
    struct appliance_manifest m;
    CHECK_OK(appliance_manifest_parse(text, strlen(text), "vm.mf", &m));
    CHECK(m.count == 3);
    const struct appliance_manifest_entry *e = appliance_manifest_find(&m, "vm.ovf");
    CHECK(e && e->algo == APPLIANCE_SHA256 && e->digest_len == 32 && e->digest[0] == 0x9f &&
          e->digest[31] == 0x08 && e->line == 1);
    e = appliance_manifest_find(&m, "disk (1).vmdk");
    CHECK(e && e->algo == APPLIANCE_SHA1 && e->digest_len == 20 && e->line == 3);
    CHECK(appliance_manifest_find(&m, "x") != NULL);
    CHECK(appliance_manifest_find(&m, "nope") == NULL);
    appliance_manifest_free(&m);
}

static void manifest_bad(const char *text, size_t len, const char *needle)
{
    struct appliance_manifest m = {0};
    int rc = appliance_manifest_parse(text, len, "bad.mf", &m);
    CHECK(rc == -EINVAL);
    CHECK(message_contains("bad.mf"));
    CHECK(message_contains(needle));
    CHECK(m.entries == NULL);
}

TEST(manifest_hostile)
{
    char text[512];
    /* SHA256 line with a SHA1-length digest */
    snprintf(text, sizeof(text), "SHA1(a)= %s\nSHA256(b)= %s\n", sha1_hex, sha1_hex);
    manifest_bad(text, strlen(text), "line 2: digest: 40 hex digits, SHA256 needs 64");
    snprintf(text, sizeof(text), "SHA1(a)= %.39sg\n", sha1_hex);
    manifest_bad(text, strlen(text), "not a hex digit");
    manifest_bad("MD5(a)= 00\n", 11, "line 1: algorithm");
    manifest_bad("SHA1 a = 00\n", 12, "expected '('");
    manifest_bad("SHA1(a 00\n", 10, "file name");
    snprintf(text, sizeof(text), "SHA1()= %s\n", sha1_hex);
    manifest_bad(text, strlen(text), "file name: empty");
    snprintf(text, sizeof(text), "SHA1(a)= %s\nSHA1(a)= %s\n", sha1_hex, sha1_hex);
    manifest_bad(text, strlen(text), "listed twice (line 1)");
    snprintf(text, sizeof(text), "SHA1(a)x= %s\n", sha1_hex);
    manifest_bad(text, strlen(text), "unexpected text");
    manifest_bad("\n\n  \n", 5, "no digest lines");
    manifest_bad("", 0, "no digest lines");
    char nul[] = "SHA1(a\0b)= a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
    manifest_bad(nul, sizeof(nul) - 1, "not text");
    /* a long line is just long: bounded by its own length */
    size_t big = 1 << 20;
    char *huge = malloc(big);
    memset(huge, 'A', big);
    memcpy(huge, "SHA1(", 5);
    manifest_bad(huge, big, "file name");
    free(huge);
}

TEST(file_digest)
{
    FILE *f = fopen(test_path("t"), "w");
    fputs("test", f);
    fclose(f);
    unsigned char d[APPLIANCE_DIGEST_MAX];
    size_t len;
    CHECK_OK(appliance_file_digest(test_path("t"), APPLIANCE_SHA1, d, &len));
    CHECK(len == 20 && d[0] == 0xa9 && d[19] == 0xd3);
    CHECK_OK(appliance_file_digest(test_path("t"), APPLIANCE_SHA256, d, &len));
    CHECK(len == 32 && d[0] == 0x9f && d[31] == 0x08);
    CHECK(appliance_file_digest(test_path("none"), APPLIANCE_SHA1, d, &len) == -ENOENT);
}

static struct appliance_system *sample_system(void)
{
    struct appliance_system *sys = calloc(1, sizeof(*sys));
    sys->name = strdup("web1");
    sys->vcpus = 4;
    sys->memory = 3ULL << 30;
    sys->disk_count = 2;
    sys->disks = calloc(2, sizeof(*sys->disks));
    sys->disks[0] = (struct appliance_disk){NULL, strdup("web1-disk1.vmdk"), 1234, 8ULL << 30,
                                            VM_DISK_BUS_VIRTIO};
    sys->disks[1] =
        (struct appliance_disk){NULL, strdup("web1-disk2.vmdk"), 99, 1ULL << 20, VM_DISK_BUS_IDE};
    sys->nic_count = 2;
    sys->nics = calloc(2, sizeof(*sys->nics));
    sys->nics[0] = (struct appliance_nic){strdup("lan"), "52:54:00:01:02:03", VM_NIC_MODEL_E1000};
    sys->nics[1] = (struct appliance_nic){NULL, "", VM_NIC_MODEL_VIRTIO};
    return sys;
}

TEST(ovf_round_trip)
{
    struct appliance_system *sys = sample_system(), *back = NULL;
    char *xml = appliance_ovf_write(sys);
    CHECK(xml != NULL);
    CHECK(strstr(xml, "ovf:/disk/vmdisk1") && strstr(xml, "<rasd:ResourceType>17<"));
    CHECK(strstr(xml, "vmdk.html#streamOptimized"));
    CHECK_OK(appliance_ovf_parse(xml, strlen(xml), "web1.ovf", &back));
    if (back) {
        CHECK(!strcmp(back->name, "web1"));
        CHECK(back->vcpus == 4 && back->memory == 3ULL << 30);
        CHECK(back->disk_count == 2 && back->disks[0].capacity == 8ULL << 30 &&
              !strcmp(back->disks[0].href, "web1-disk1.vmdk") && back->disks[0].file_size == 1234 &&
              back->disks[0].bus == VM_DISK_BUS_VIRTIO && back->disks[1].bus == VM_DISK_BUS_IDE);
        CHECK(back->nic_count == 2 && !strcmp(back->nics[0].network, "lan") &&
              !strcmp(back->nics[0].mac, "52:54:00:01:02:03") &&
              back->nics[0].model == VM_NIC_MODEL_E1000 && back->nics[1].mac[0] == '\0');
    }
    appliance_system_free(back);
    appliance_system_free(sys);
    free(xml);
}

/* A descriptor in the shape ovftool writes (prefixes, units and ExtraConfig as VMware spells). */
static const char vmware_ovf[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<Envelope vmw:buildId=\"build-1\" xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" "
    "xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" "
    "xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
    "CIM_ResourceAllocationSettingData\" xmlns:vmw=\"http://www.vmware.com/schema/ovf\">\n"
    "  <References><File ovf:href=\"Ubuntu-disk1.vmdk\" ovf:id=\"file1\" "
    "ovf:size=\"12345\"/></References>\n"
    "  <DiskSection><Info>x</Info><Disk ovf:capacity=\"16\" "
    "ovf:capacityAllocationUnits=\"byte * 2^30\" ovf:diskId=\"vmdisk1\" ovf:fileRef=\"file1\"/>"
    "</DiskSection>\n"
    "  <VirtualSystem ovf:id=\"Ubuntu 12.04 x64\"><Info>A VM</Info>\n"
    "    <VirtualHardwareSection><Info>hw</Info>\n"
    "      <Item><rasd:ElementName>2 CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>"
    "<rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></"
    "Item>\n"
    "      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:ElementName>mem"
    "</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4"
    "</rasd:ResourceType><rasd:VirtualQuantity>1000</rasd:VirtualQuantity></Item>\n"
    "      <Item><rasd:ElementName>SCSI</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>"
    "<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6"
    "</rasd:ResourceType></Item>\n"
    "      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1"
    "</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>"
    "<rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>"
    "<rasd:ResourceType>17</rasd:ResourceType></Item>\n"
    "      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>VM "
    "Network</rasd:Connection><rasd:ElementName>eth0</rasd:ElementName><rasd:InstanceID>5"
    "</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10"
    "</rasd:ResourceType></Item>\n"
    "      <vmw:ExtraConfig ovf:required=\"false\" vmw:key=\"ethernet0.address\" "
    "vmw:value=\"00:50:56:AB:CD:EF\"/>\n"
    "    </VirtualHardwareSection>\n"
    "  </VirtualSystem>\n"
    "</Envelope>\n";

TEST(ovf_vmware_style)
{
    struct appliance_system *sys = NULL;
    CHECK_OK(appliance_ovf_parse(vmware_ovf, strlen(vmware_ovf), "u.ovf", &sys));
    if (!sys)
        return;
    CHECK(!strcmp(sys->name, "Ubuntu-12.04-x64"));
    CHECK(sys->vcpus == 2 && sys->memory == 1000ULL << 20);
    CHECK(sys->disk_count == 1 && sys->disks[0].capacity == 16ULL << 30 &&
          sys->disks[0].bus == VM_DISK_BUS_SCSI &&
          !strcmp(sys->disks[0].href, "Ubuntu-disk1.vmdk"));
    CHECK(sys->nic_count == 1 && !strcmp(sys->nics[0].network, "VM Network") &&
          !strcmp(sys->nics[0].mac, "00:50:56:ab:cd:ef") &&
          sys->nics[0].model == VM_NIC_MODEL_E1000);
    appliance_system_free(sys);
}

/* vmware_ovf with every FROM replaced by TO must fail naming NEEDLE. */
static void ovf_bad(const char *from, const char *to, const char *needle)
{
    CHECK(strstr(vmware_ovf, from) != NULL);
    char *text = strdup(vmware_ovf), *at;
    size_t start = 0;
    while ((at = strstr(text + start, from))) {
        char *next = vs_asprintf("%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
        start = (size_t)(at - text) + strlen(to);
        free(text);
        text = next;
    }
    struct appliance_system *sys = NULL;
    int rc = appliance_ovf_parse(text, strlen(text), "bad.ovf", &sys);
    CHECK(rc < 0);
    CHECK(sys == NULL);
    if (rc < 0) {
        CHECK(message_contains("bad.ovf"));
        CHECK(message_contains(needle));
    }
    free(text);
}

TEST(ovf_hostile)
{
    ovf_bad("Ubuntu-disk1.vmdk", "../../etc/shadow", "ovf:href '../../etc/shadow' is not a plain");
    ovf_bad("Ubuntu-disk1.vmdk", "/dev/sda", "is not a plain file name");
    ovf_bad("Ubuntu-disk1.vmdk", "..", "is not a plain file name");
    ovf_bad("ovf:fileRef=\"file1\"", "ovf:fileRef=\"file9\"",
            "ovf:fileRef 'file9' is not in References");
    ovf_bad("ovf:/disk/vmdisk1", "ovf:/disk/vmdisk7", "no disk 'vmdisk7' in DiskSection");
    ovf_bad("ovf:/disk/vmdisk1", "file:///etc/passwd", "HostResource");
    ovf_bad("<rasd:VirtualQuantity>2<", "<rasd:VirtualQuantity>0<", "not a CPU count");
    ovf_bad("<rasd:VirtualQuantity>2<", "<rasd:VirtualQuantity>99999999999999999999<",
            "not a CPU count");
    ovf_bad("<rasd:VirtualQuantity>1000<", "<rasd:VirtualQuantity>18446744073709551615<",
            "not a memory size");
    ovf_bad("MegaBytes", "byte * 2^99", "not a memory size");
    ovf_bad("MegaBytes", "furlongs", "not a memory size");
    ovf_bad("<rasd:ResourceType>4<", "<rasd:ResourceType>44<", "no memory Item");
    ovf_bad("ovf:capacity=\"16\"", "ovf:capacity=\"${disk.size}\"", "ovf:capacity");
    ovf_bad("ovf:capacity=\"16\"", "ovf:capacity=\"-1\"", "ovf:capacity");
    ovf_bad("00:50:56:AB:CD:EF", "00:50:56:AB:CD", "not a MAC address");
    ovf_bad("<rasd:ResourceType>3<", "<rasd:ResourceType>x<", "ResourceType");
    ovf_bad("Envelope", "Elephant", "expected Envelope");
    ovf_bad("</Envelope>", "", "not well-formed");
    ovf_bad("VirtualSystem", "VirtualMachine", "VirtualSystem: missing");
    ovf_bad("VirtualHardwareSection", "VirtualHardwareSectionX", "VirtualHardwareSection: missing");
}

TEST(ovf_entities_not_expanded)
{
    /* an external entity must never be loaded; an entity bomb must not blow up */
    static const char xxe[] =
        "<?xml version=\"1.0\"?><!DOCTYPE e [<!ENTITY x SYSTEM \"file:///etc/passwd\">"
        "<!ENTITY a \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">"
        "<!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;\">]>"
        "<Envelope><VirtualSystem><Name>&x;&c;</Name><VirtualHardwareSection/></VirtualSystem>"
        "</Envelope>";
    struct appliance_system *sys = NULL;
    int rc = appliance_ovf_parse(xxe, strlen(xxe), "xxe.ovf", &sys);
    CHECK(rc < 0);
    CHECK(sys == NULL);
}

TEST(ovf_external_entity_not_loaded)
{
    /* a valid descriptor whose Name is an external entity: the file must not be read into it */
    const char *at = strstr(vmware_ovf, "<Envelope");
    const char *vs =
        strstr(vmware_ovf, "<VirtualSystem ovf:id=\"Ubuntu 12.04 x64\"><Info>A VM</Info>");
    CHECK(at && vs);
    if (!at || !vs)
        return;
    const char *after = vs + strlen("<VirtualSystem ovf:id=\"Ubuntu 12.04 x64\"><Info>A VM</Info>");
    char *text = vs_asprintf("<?xml version=\"1.0\"?><!DOCTYPE Envelope [<!ENTITY x SYSTEM "
                             "\"file:///etc/passwd\">]>%.*s<VirtualSystem><Name>&x;</Name>%s",
                             (int)(vs - at), at, after);
    struct appliance_system *sys = NULL;
    CHECK_OK(appliance_ovf_parse(text, strlen(text), "xxe.ovf", &sys));
    CHECK(sys && !strstr(sys->name, "root"));
    appliance_system_free(sys);
    free(text);
}

TEST(ovf_units)
{
    struct appliance_system *sys = NULL;
    char *text = strdup(vmware_ovf);
    char *at = strstr(text, "MegaBytes");
    memcpy(at, "byte*2^20", 9); /* same length as MegaBytes */
    CHECK_OK(appliance_ovf_parse(text, strlen(text), "u.ovf", &sys));
    CHECK(sys && sys->memory == 1000ULL << 20);
    appliance_system_free(sys);
    free(text);
}

static const char xva_xml[] =
    "<value><struct><member><name>objects</name><value><array><data>"
    "<value><struct><member><name>class</name><value>VM</value></member>"
    "<member><name>id</name><value>Ref:0</value></member>"
    "<member><name>snapshot</name><value><struct>"
    "<member><name>name_label</name><value>db server</value></member>"
    "<member><name>VCPUs_max</name><value>4</value></member>"
    "<member><name>memory_static_max</name><value>1073741824</value></member>"
    "<member><name>VBDs</name><value><array><data><value>Ref:1</value><value>Ref:9</value>"
    "</data></array></value></member>"
    "<member><name>VIFs</name><value><array><data><value>Ref:3</value></data></array></value>"
    "</member></struct></value></member></struct></value>"
    "<value><struct><member><name>class</name><value>VBD</value></member>"
    "<member><name>id</name><value>Ref:1</value></member><member><name>snapshot</name><value>"
    "<struct><member><name>VDI</name><value>Ref:2</value></member><member><name>type</name>"
    "<value>Disk</value></member></struct></value></member></struct></value>"
    "<value><struct><member><name>class</name><value>VBD</value></member>"
    "<member><name>id</name><value>Ref:9</value></member><member><name>snapshot</name><value>"
    "<struct><member><name>type</name><value>CD</value></member></struct></value></member>"
    "</struct></value>"
    "<value><struct><member><name>class</name><value>VDI</value></member>"
    "<member><name>id</name><value>Ref:2</value></member><member><name>snapshot</name><value>"
    "<struct><member><name>virtual_size</name><value>SIZE</value></member></struct></value>"
    "</member></struct></value>"
    "<value><struct><member><name>class</name><value>VIF</value></member>"
    "<member><name>id</name><value>Ref:3</value></member><member><name>snapshot</name><value>"
    "<struct><member><name>MAC</name><value>MACADDR</value></member></struct></value></member>"
    "</struct></value>"
    "</data></array></value></member></struct></value>";

static int xva_with(const char *size, const char *mac, struct appliance_system **sys)
{
    char *a = strdup(xva_xml), *s = strstr(a, "SIZE"), *m;
    char *b = vs_asprintf("%.*s%s%s", (int)(s - a), a, size, s + 4);
    m = strstr(b, "MACADDR");
    char *c = vs_asprintf("%.*s%s%s", (int)(m - b), b, mac, m + 7);
    int rc = appliance_xva_parse(c, strlen(c), "g.xva: ova.xml", sys);
    free(a);
    free(b);
    free(c);
    return rc;
}

TEST(xva_ova_xml)
{
    struct appliance_system *sys = NULL;
    CHECK_OK(xva_with("10485760", "00:16:3e:aa:bb:cc", &sys));
    if (sys) {
        CHECK(!strcmp(sys->name, "db-server") && sys->vcpus == 4 && sys->memory == 1ULL << 30);
        CHECK(sys->disk_count == 1 && !strcmp(sys->disks[0].id, "Ref:2") &&
              sys->disks[0].capacity == 10485760);
        CHECK(sys->nic_count == 1 && !strcmp(sys->nics[0].mac, "00:16:3e:aa:bb:cc"));
        appliance_system_free(sys);
    }
    sys = NULL;
    CHECK(xva_with("0", "", &sys) == -EINVAL && message_contains("virtual_size"));
    CHECK(xva_with("99999999999999999999", "", &sys) == -EINVAL);
    CHECK(xva_with("1024", "zz", &sys) == -EINVAL && message_contains("MAC"));
    CHECK(appliance_xva_parse("<value/>", 8, "x.xml", &sys) == -EINVAL &&
          message_contains("objects"));
    CHECK(sys == NULL);
}

TEST(mounted_rw_not_a_device)
{
    char mp[64];
    FILE *f = fopen(test_path("plain"), "w");
    fclose(f);
    CHECK(appliance_mounted_rw(test_path("plain"), mp, sizeof(mp)) == 0);
    CHECK(appliance_mounted_rw(test_path("missing"), mp, sizeof(mp)) == -ENOENT);
}
