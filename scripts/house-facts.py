#!/usr/bin/env python3
"""Facts about the code's shape, for reviews: production files over 400 lines, functions over
80 lines, and import circles between files (a `use` of `crate::`/`super::`/`self::` paths is an
edge from the file that writes it to the file that defines the module; `mod` declarations are
not edges). Run from the repository root: `scripts/house-facts.py`."""
import pathlib
import re
import sys

CRATES = ["purchase", "infra", "kafka-group", "gateway", "worker", "load", "test-support"]

def sizes(root):
    files=[p for p in root.rglob('*.rs') if 'target' not in p.parts and 'src' in p.parts and '.local' not in p.parts]
    big=[(len(p.read_text().splitlines()),str(p)) for p in files]
    print("production files over 400 lines:")
    for n,p in sorted(big,reverse=True):
        if n>400: print(f"  {n:5} {p}")
    print("functions over 80 lines:")
    fnre=re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)')
    for p in files:
        lines=p.read_text().splitlines()
        i=0
        while i<len(lines):
            m=fnre.match(lines[i])
            if m:
                depth=0;started=False;j=i
                while j<len(lines):
                    s=re.sub(r'"([^"\\]|\\.)*"','""',lines[j]); s=re.sub(r"'.'","",s); s=s.split('//')[0]
                    depth+=s.count('{')-s.count('}')
                    if '{' in s: started=True
                    if started and depth<=0: break
                    if not started and s.rstrip().endswith(';'): break
                    j+=1
                if started and j-i+1>80: print(f"  {j-i+1:4} {p}:{i+1} {m.group(6)}")
                i=j+1 if started else i+1
            else: i+=1

def graph(src):
    src=pathlib.Path(src); files={}
    for p in src.rglob('*.rs'):
        rel=p.relative_to(src).with_suffix('')
        parts=list(rel.parts)
        if parts[-1]=='mod': parts=parts[:-1]
        if parts==['lib'] or parts==['main']: parts=[]
        files['::'.join(parts)]=p
    edges={m:set() for m in files}
    for m,p in files.items():
        text=p.read_text()
        text=re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*','',text,flags=re.S)
        me=m.split('::') if m else []
        # collect use trees
        for u in re.findall(r'\buse\s+([^;]+);',text)+re.findall(r'\b((?:crate|super)(?:::\w+)+)',text):
            u=u.replace('\n',' ')
            # expand simple brace lists one level
            paths=[]
            def expand(prefix, body):
                depth=0; cur=''; items=[]
                for ch in body:
                    if ch=='{': depth+=1
                    if ch=='}': depth-=1
                    if ch==',' and depth==0: items.append(cur); cur=''
                    else: cur+=ch
                items.append(cur)
                for it in items:
                    it=it.strip()
                    if not it: continue
                    mm=re.match(r'([\w:]*?)::\{(.*)\}$',it,re.S)
                    if mm: expand(prefix+[x for x in mm.group(1).split('::') if x], mm.group(2))
                    else: paths.append(prefix+[x for x in it.split(' as ')[0].split('::') if x])
            mm=re.match(r'([\w:]*?)::\{(.*)\}$',u.strip(),re.S)
            if mm: expand([x for x in mm.group(1).split('::') if x], mm.group(2))
            else: paths.append([x for x in u.strip().split(' as ')[0].split('::') if x])
            for path in paths:
                if not path: continue
                if path[0]=='crate': base=[]; rest=path[1:]
                elif path[0]=='super':
                    base=me[:-1] if not p.name=='mod.rs' else me[:-1]
                    rest=path[1:]
                    while rest and rest[0]=='super': base=base[:-1]; rest=rest[1:]
                elif path[0]=='self': base=me if p.name in('mod.rs','lib.rs') else me[:-1]; rest=path[1:]
                else: continue
                # longest module prefix
                target=None
                for k in range(len(rest),-1,-1):
                    cand='::'.join(base+rest[:k])
                    if cand in files: target=cand; break
                if target is not None and target!=m and not (target=='' and False):
                    edges[m].add(target)
    return edges
def sccs(edges):
    index={};low={};st=[];on=set();res=[];i=[0]
    sys.setrecursionlimit(10000)
    def sc(v):
        index[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
        for w in edges.get(v,()):
            if w not in index: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],index[w])
        if low[v]==index[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            res.append(comp)
    for v in edges:
        if v not in index: sc(v)
    return [c for c in res if len(c)>1]

def main():
    root = pathlib.Path(".")
    sizes(root)
    total = 0
    for crate in CRATES:
        for circle in sccs(graph(f"{crate}/src")):
            print(f"  {crate}: circle of {len(circle)}: {sorted(circle)}")
            total += 1
    print("import circles:", total)


if __name__ == "__main__":
    main()
