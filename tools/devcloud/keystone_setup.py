"""Idempotently create the dev-cloud projects, users, roles and catalog.

Runs in the keystone venv (python-keystoneclient is a keystone dependency)
after ``keystone-manage bootstrap`` and once keystone answers on 15000.
"""

import os
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

AUTH_URL = 'http://127.0.0.1:15000/v3'
REGION = 'RegionOne'
ADMIN_PASSWORD = os.environ.get('DEVCLOUD_ADMIN_PASSWORD', 'devcloud-admin')

PROJECTS = ['cgsnap', 'service']
# user -> (password, project, roles)
USERS = {
    'cgsnap': ('cgsnap-dev', 'cgsnap', ['member', 'reader']),
    'cinder': ('devcloud-cinder', 'service', ['admin', 'service']),
    'glance': ('devcloud-glance', 'service', ['admin', 'service']),
}
# service type -> (name, url)
SERVICES = {
    'volumev3': ('cinderv3', 'http://127.0.0.1:18776/v3/%(project_id)s'),
    'block-storage': ('cinder', 'http://127.0.0.1:18776/v3/%(project_id)s'),
    'image': ('glance', 'http://127.0.0.1:19292'),
}


def main():
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=ADMIN_PASSWORD, project_name='admin',
                       user_domain_id='default', project_domain_id='default')
    ks = client.Client(session=session.Session(auth=auth))

    domain = ks.domains.get('default')
    roles = {r.name: r for r in ks.roles.list()}
    for rname in ('member', 'reader', 'service'):
        if rname not in roles:
            roles[rname] = ks.roles.create(rname)

    projects = {p.name: p for p in ks.projects.list(domain=domain)}
    for pname in PROJECTS:
        if pname not in projects:
            projects[pname] = ks.projects.create(pname, domain,
                                                 description='devcloud')

    users = {u.name: u for u in ks.users.list(domain=domain)}
    for uname, (pw, pname, rnames) in USERS.items():
        if uname in users:
            # keep the password in sync with this script
            ks.users.update(users[uname], password=pw)
        else:
            users[uname] = ks.users.create(uname, domain=domain, password=pw,
                                           default_project=projects[pname])
        for rname in rnames:
            ks.roles.grant(roles[rname], user=users[uname],
                           project=projects[pname])

    existing = {s.type: s for s in ks.services.list()}
    for stype, (sname, url) in SERVICES.items():
        svc = existing.get(stype) or ks.services.create(sname, type=stype)
        eps = {e.interface: e for e in ks.endpoints.list(service=svc)}
        for iface in ('public', 'internal', 'admin'):
            ep = eps.get(iface)
            if ep is None:
                ks.endpoints.create(svc, url, interface=iface, region=REGION)
            elif ep.url != url:
                ks.endpoints.update(ep, url=url)

    print('keystone setup ok: project cgsnap id=%s' % projects['cgsnap'].id,
          file=sys.stderr)


if __name__ == '__main__':
    main()
